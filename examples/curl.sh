#!/bin/sh
# Tops up a wallet and reads it back with curl.
#   GQL_WALLET_URL=http://127.0.0.1:8000/graphql GQL_WALLET_API_KEY=gqlw_sk_... sh examples/curl.sh
set -eu
URL="${GQL_WALLET_URL:-http://127.0.0.1:8000/graphql}"

gql() {
  curl -sS --fail-with-body "$URL" \
    -H "Authorization: Bearer $GQL_WALLET_API_KEY" \
    -H 'Content-Type: application/json' \
    -H 'Accept: application/graphql-response+json' \
    -d "$1"
  echo
}

gql '{"query": "mutation TopUp($input: TopUpWalletInput!) { topUpWallet(input: $input) { wallet { balance } userErrors { code field } } }",
      "variables": {"input": {"customerId": "cus_curl_example", "currency": "usd", "amount": 1000,
                              "idempotencyKey": "curl-example-payment-1"}}}'
gql '{"query": "{ customerWallet(customerId: \"cus_curl_example\", currency: \"usd\") { balance } }"}'

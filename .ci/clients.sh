#!/usr/bin/env bash
# The client ecosystem against a live server: graphql-http's spec audits, then the client
# examples of docs/clients.md (curl, TypeScript from graphql-codegen, Python from
# ariadne-codegen), each checked by its output. Needs .venv with gql-wallet installed (.ci/run makes it), node and npm.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

step() { echo; echo "== $* ($(date +%T))"; }

expect_line() {  # expect_line WHAT EXPECTED ACTUAL
  if [ "$2" != "$3" ]; then
    echo "FAIL $1: expected $2, got $3" >&2
    exit 1
  fi
  echo "ok   $1: $3"
}

step "live server on SQLite"
export GQL_WALLET_DATABASE_URL="sqlite:///$WORK/wallet.db"
# The webhook receivers below listen on loopback, over http (a development setting), and
# retry quickly while they start.
export GQL_WALLET_WEBHOOKS_ALLOW_LOOPBACK_HTTP=true
export GQL_WALLET_WEBHOOK_RETRY_DELAYS=0.5,1,1,2,2,5,5,10
PORT=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export GQL_WALLET_URL="http://127.0.0.1:$PORT/graphql"
.venv/bin/gql-wallet serve --host 127.0.0.1 --port "$PORT" > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
  curl -sf -o /dev/null -H 'Accept: text/html' "$GQL_WALLET_URL" && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log"; exit 1; }
  sleep 0.2
done
curl -sf -o /dev/null -H 'Accept: text/html' "$GQL_WALLET_URL" || { cat "$WORK/server.log"; exit 1; }
GQL_WALLET_API_KEY=$(.venv/bin/gql-wallet api-keys create --organization ci-clients | tail -n 1)
export GQL_WALLET_API_KEY
echo "serving $GQL_WALLET_URL"

step "graphql-http server audits (GraphQL over HTTP)"
(cd .ci/graphql-http && npm ci --no-audit --no-fund --loglevel=error && node audit.mjs "$GQL_WALLET_URL" "$GQL_WALLET_API_KEY")

step "curl example (examples/curl.sh)"
sh examples/curl.sh | tee "$WORK/curl.out"
expect_line "curl: balance after the top-up" '{"data":{"customerWallet":{"balance":1000}}}' "$(tail -n 1 "$WORK/curl.out")"

step "TypeScript client: graphql-codegen + tsc --strict (examples/typescript)"
(
  cd examples/typescript
  rm -rf src/generated dist
  # docs/clients.md's commands, as written there.
  npm ci
  npm run build
  node dist/client.js | tee "$WORK/ts.out"
  # The same top-up again: its idempotency key makes it a replay, the balance stays.
  node dist/client.js | tee -a "$WORK/ts.out"
)
expect_line "TypeScript: balance after the top-up and its retry" "cus_ts_example usd balance=2500" \
  "$(tail -n 1 "$WORK/ts.out" | cut -d' ' -f1-3)"

step "Python client: ariadne-codegen in its own venv (examples/python)"
(
  cd examples/python
  rm -rf wallet_client
  # docs/clients.md's commands, as written there.
  python3 -m venv .venv && .venv/bin/pip install -r requirements.txt
  .venv/bin/ariadne-codegen
  .venv/bin/python client.py | tee "$WORK/py.out"
  .venv/bin/python client.py | tee -a "$WORK/py.out"
)
expect_line "Python: balance after the top-up and its retry" "cus_py_example usd balance=1500" \
  "$(tail -n 1 "$WORK/py.out" | cut -d' ' -f1-3)"

step "webhook receivers: Python and TypeScript, each with its standardwebhooks package (examples/webhooks)"
gql() {  # gql JSON-BODY: one GraphQL request with the CI key; prints the answer
  curl -sf -H "Authorization: Bearer $GQL_WALLET_API_KEY" -H 'Content-Type: application/json' \
    --data "$1" "$GQL_WALLET_URL"
}
field() {  # field PYTHON-EXPRESSION: a value of the JSON answer on stdin
  python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"
}
wait_for() {  # wait_for FILE PATTERN COUNT: until FILE has COUNT lines matching PATTERN
  for _ in $(seq 150); do
    [ "$(grep -c -- "$2" "$1" 2>/dev/null || true)" -ge "$3" ] && return 0
    sleep 0.2
  done
  echo "FAIL: $1 has no $3 lines matching $2:" >&2; cat "$1" >&2; exit 1
}
(cd examples/webhooks/python && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt)
(cd examples/webhooks/typescript && npm ci --no-audit --no-fund --loglevel=error && npm run build)
RECEIVER_PIDS=()
trap 'kill "${RECEIVER_PIDS[@]}" 2>/dev/null || true; cleanup' EXIT
for lang in python typescript; do
  port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  made=$(gql '{"query": "mutation($i: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $i) { endpoint { id } secret userErrors { code message } } }", "variables": {"i": {"url": "http://127.0.0.1:'"$port"'/hooks", "events": ["wallet.transaction.created", "wallet.balance.depleted"], "description": "'"$lang"' example"}}}')
  secret=$(echo "$made" | field 'd["data"]["createWebhookEndpoint"]["secret"]')
  endpoint=$(echo "$made" | field 'd["data"]["createWebhookEndpoint"]["endpoint"]["id"]')
  eval "ENDPOINT_$lang=$endpoint"
  if [ "$lang" = python ]; then
    (cd examples/webhooks/python && WEBHOOK_SECRET=$secret PORT=$port exec .venv/bin/python receiver.py) > "$WORK/$lang.log" 2>&1 &
  else
    (cd examples/webhooks/typescript && WEBHOOK_SECRET=$secret PORT=$port exec node dist/receiver.js) > "$WORK/$lang.log" 2>&1 &
  fi
  RECEIVER_PIDS+=($!)
done
gql '{"query": "mutation { topUpWallet(input: {customerId: \"cus_hooks\", currency: \"usd\", amount: 700, idempotencyKey: \"hooks-top-up\"}) { userErrors { code } } }"}' > /dev/null
gql '{"query": "mutation { chargeWallet(input: {customerId: \"cus_hooks\", currency: \"usd\", amount: 700, idempotencyKey: \"hooks-charge\"}) { userErrors { code } } }"}' > /dev/null
for lang in python typescript; do
  wait_for "$WORK/$lang.log" "^wallet\." 3
  expect_line "$lang receiver: the top-up, the charge and the depletion, verified" \
    "wallet.transaction.created wallet.transaction.created wallet.balance.depleted" \
    "$(grep '^wallet\.' "$WORK/$lang.log" | sort -t= -k2 -n | cut -d' ' -f1 | tr '\n' ' ' | sed 's/ $//')"
  # A redelivery repeats an event's webhook-id: the receiver drops it.
  endpoint_var="ENDPOINT_$lang"
  delivery=$(gql '{"query": "query($e: ID!) { webhookDeliveries(endpointId: $e, first: 1) { edges { node { id status } } } }", "variables": {"e": "'"${!endpoint_var}"'"}}' | field 'd["data"]["webhookDeliveries"]["edges"][0]["node"]["id"]')
  gql '{"query": "mutation($i: RedeliverWebhookInput!) { redeliverWebhook(input: $i) { userErrors { code } } }", "variables": {"i": {"deliveryId": "'"$delivery"'"}}}' > /dev/null
  wait_for "$WORK/$lang.log" "^duplicate evt_" 1
  expect_line "$lang receiver: a redelivered event is dropped" "1" "$(grep -c '^duplicate evt_' "$WORK/$lang.log")"
  grep -q '^rejected' "$WORK/$lang.log" && { echo "FAIL: $lang rejected a delivery" >&2; exit 1; }
done

step "the server audits its ledger"
.venv/bin/gql-wallet verify
echo
echo "client ecosystem: all checks passed"

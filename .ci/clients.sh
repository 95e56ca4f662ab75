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

step "the server audits its ledger"
.venv/bin/gql-wallet verify
echo
echo "client ecosystem: all checks passed"

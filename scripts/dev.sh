#!/usr/bin/env bash
# `make dev`: local D1 migrations, .dev.vars secrets, wrangler dev on 127.0.0.1:8787, the demo seed,
# and what to paste. Runs without prompts, in the foreground or in the background, until stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8787}
export WRANGLER_SEND_METRICS=false

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

# Local secrets, made once and kept (a second `make dev` reuses them).
touch .dev.vars
chmod 600 .dev.vars
grep -q '^ADMIN_TOKEN=' .dev.vars || echo "ADMIN_TOKEN=sluice_admin_$(random_hex 24)" >> .dev.vars
grep -q '^ENCRYPTION_KEY=' .dev.vars || echo "ENCRYPTION_KEY=$(random_hex 32)" >> .dev.vars
ADMIN_TOKEN=$(sed -n 's/^ADMIN_TOKEN=//p' .dev.vars | tail -n 1)

echo "[dev] applying D1 migrations to the local database (.wrangler/state)"
CI=true wrangler d1 migrations apply DB --local > .wrangler-migrate.log 2>&1 || { cat .wrangler-migrate.log; exit 1; }
rm -f .wrangler-migrate.log

echo "[dev] starting wrangler dev (workerd) on http://127.0.0.1:$PORT"
wrangler dev --ip 127.0.0.1 --port "$PORT" --var SLUICE_DEV:1 --show-interactive-dev-session=false < /dev/null &
WRANGLER_PID=$!
stop() { kill "$WRANGLER_PID" 2>/dev/null || true; wait "$WRANGLER_PID" 2>/dev/null || true; }
trap 'stop; exit 130' INT TERM
trap stop EXIT

for _ in $(seq 1 240); do
  if curl -fsS "http://127.0.0.1:$PORT/health" > /dev/null 2>&1; then break; fi
  if ! kill -0 "$WRANGLER_PID" 2>/dev/null; then echo "[dev] wrangler dev exited" >&2; exit 1; fi
  sleep 0.5
done
curl -fsS "http://127.0.0.1:$PORT/health" > /dev/null || { echo "[dev] the gateway did not come up" >&2; exit 1; }

node scripts/seed-demo.mjs "http://127.0.0.1:$PORT" "$ADMIN_TOKEN"

wait "$WRANGLER_PID"

#!/usr/bin/env bash
# Installs what building and running Sluice needs, idempotently, at pinned versions.
# A second run installs nothing. Works offline except for the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKER_BUILD_VERSION=0.8.7
NODE_MIN_MAJOR=20
NODE_MIN_MINOR=3
log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*" >&2; }

# The wasm-bindgen CLI must equal the wasm-bindgen crate in Cargo.lock.
wasm_bindgen_version() {
  awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock
}

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  log "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

# `make lint` runs rustfmt and clippy.
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    log "adding the $component component"
    rustup component add "$component"
  fi
done

if [ "$(worker-build --version 2>/dev/null | awk '{print $NF}')" != "$WORKER_BUILD_VERSION" ]; then
  log "installing worker-build $WORKER_BUILD_VERSION (a few minutes, once)"
  cargo install worker-build --version "=$WORKER_BUILD_VERSION" --locked
fi

WB_VERSION=$(wasm_bindgen_version)
if [ -z "$WB_VERSION" ]; then echo "setup: no wasm-bindgen in Cargo.lock" >&2; exit 1; fi
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $NF}')" != "$WB_VERSION" ]; then
  log "installing wasm-bindgen-cli $WB_VERSION (matches Cargo.lock)"
  # Not --locked: the CLI's own lockfile names a webpki-roots release the registry mirror lacks.
  cargo install wasm-bindgen-cli --version "=$WB_VERSION"
fi

node_ok() {
  command -v node >/dev/null 2>&1 || return 1
  local v; v=$(node -p 'process.versions.node' 2>/dev/null) || return 1
  local major=${v%%.*} rest=${v#*.}; local minor=${rest%%.*}
  [ "$major" -gt "$NODE_MIN_MAJOR" ] || { [ "$major" -eq "$NODE_MIN_MAJOR" ] && [ "$minor" -ge "$NODE_MIN_MINOR" ]; }
}
if ! node_ok; then
  echo "setup: Node.js >= $NODE_MIN_MAJOR.$NODE_MIN_MINOR is needed for wrangler (found: $(node --version 2>/dev/null || echo none))." >&2
  exit 1
fi

# The official Python SDK for the e2e SDK case, exactly as locked (tests/sdk/requirements.lock),
# into target/sdk-python; reinstalled only when the lock changed.
if ! cmp -s tests/sdk/requirements.lock target/sdk-python/.sluice-lock 2>/dev/null; then
  log "installing the Python SDK from tests/sdk/requirements.lock"
  rm -rf target/sdk-python
  python3 -m pip install --quiet --disable-pip-version-check --no-input --target target/sdk-python -r tests/sdk/requirements.lock
  cp tests/sdk/requirements.lock target/sdk-python/.sluice-lock
fi

# npm packages exactly as locked; reinstalled only when the lockfile changed.
if [ ! -f node_modules/.package-lock.json ] || ! cmp -s package-lock.json node_modules/.sluice-lock; then
  log "installing npm packages from package-lock.json"
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json node_modules/.sluice-lock
fi

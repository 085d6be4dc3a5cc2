#!/usr/bin/env bash
# What is large in the WASM (`make bench` runs it after the timings): the release build again with
# its function names kept (target/size, apart from the deployed build), through wasm-bindgen, then
# twiggy (pinned, installed into target/tools once), summed by crate and by the gateway's modules.
set -euo pipefail
cd "$(dirname "$0")/.."

TWIGGY_VERSION=0.8.0
TWIGGY=target/tools/bin/twiggy
log() { printf '\033[1;34m[size]\033[0m %s\n' "$*" >&2; }

if [ "$("$TWIGGY" --version 2>/dev/null | awk '{print $NF}')" != "$TWIGGY_VERSION" ]; then
  log "installing twiggy $TWIGGY_VERSION into target/tools (a few minutes, once)"
  cargo install twiggy --version "=$TWIGGY_VERSION" --locked --root target/tools --quiet
fi

log "building the WASM with its names kept (target/size)"
CARGO_PROFILE_RELEASE_STRIP=none cargo build --quiet --release --lib \
  --target wasm32-unknown-unknown --target-dir target/size
rm -rf target/size/bindgen
wasm-bindgen --target module --out-dir target/size/bindgen \
  target/size/wasm32-unknown-unknown/release/sluice.wasm

"$TWIGGY" top -n 1000000 --format csv target/size/bindgen/sluice_bg.wasm > target/size/top.csv
python3 scripts/size-parts.py target/size/top.csv

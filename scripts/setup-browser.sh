#!/usr/bin/env bash
# Installs headless Chromium (Debian's package) and a font for the browser tests, only when missing; idempotent.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
log() { printf '\033[1;34m[setup-browser]\033[0m %s\n' "$*" >&2; }

need=()
[ -x "$CHROMIUM" ] || need+=(chromium)
# Without any font, text renders as empty boxes and sizes in screenshots are meaningless.
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
  command -v sudo >/dev/null 2>&1 || { echo "setup-browser: need root (or sudo) to install: ${need[*]}" >&2; exit 1; }
else
  SUDO=
fi

export DEBIAN_FRONTEND=noninteractive
log "installing ${need[*]} with apt-get (once)"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${need[@]}" >/dev/null
[ -x "$CHROMIUM" ] || { echo "setup-browser: $CHROMIUM is still missing after apt-get install" >&2; exit 1; }
log "$("$CHROMIUM" --version 2>/dev/null || echo chromium installed)"

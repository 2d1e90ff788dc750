#!/usr/bin/env bash
# Both VMs: base packages, the repository in place, time in UTC. Idempotent.
set -euo pipefail

SRC=/opt/ferry-src

log() { printf '[common] %s\n' "$*"; }
die() {
  printf '[common] error: %s\n' "$*" >&2
  exit 1
}

[[ -d $SRC/tests/testbed ]] ||
  die "$SRC does not hold the ferry repository (the rsync synced folder is missing; run 'vagrant rsync')"

export DEBIAN_FRONTEND=noninteractive
packages=(ca-certificates curl gnupg python3 rsync tar gzip jq)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

timedatectl set-timezone UTC 2>/dev/null || true
log "ok ($(. /etc/os-release && echo "$PRETTY_NAME"), repository at $SRC)"

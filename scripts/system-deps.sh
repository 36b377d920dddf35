#!/usr/bin/env bash
# Install the Debian packages labdock and its tests need, if any are missing.
set -euo pipefail
# `system-deps.sh run`: what serving needs; without an argument, also what the tests need.
packages=(debootstrap ca-certificates)
if [ "${1:-test}" != run ]; then
  packages+=(busybox-static postgresql chromium fonts-dejavu-core)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian package starts a cluster of its own; the tests start a private one instead.

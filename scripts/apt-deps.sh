#!/usr/bin/env bash
# Debian packages the build and the tests need; installs only what is missing (apt keeps its
# downloads in /var/cache/apt, so repeat runs on a machine are quick).
#   libclang-dev: the v4l crate's bindgen.  mosquitto: the real broker the daemon tests start.
set -euo pipefail
want=(libclang-dev mosquitto "$@")
missing=()
for p in "${want[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "== installing ${missing[*]}"
$sudo apt-get update -q || echo "apt-get update failed; trying the package lists already here" >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}" >/dev/null

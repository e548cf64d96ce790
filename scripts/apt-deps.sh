#!/usr/bin/env bash
# Debian packages the build needs (libclang-dev: the v4l crate's bindgen), plus those named as
# arguments (the tests', the cross toolchain's); installs only what is missing (apt keeps its
# downloads in /var/cache/apt, so repeat runs on a machine are quick). An `:arm64` package adds
# the arm64 architecture first.
set -euo pipefail
want=(libclang-dev "$@")
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
update=0
for p in "$@"; do
    case "$p" in
    *:arm64)
        if ! dpkg --print-foreign-architectures | grep -qx arm64; then
            $sudo dpkg --add-architecture arm64
            update=1
        fi
        ;;
    esac
done
missing=()
for p in "${want[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "== installing ${missing[*]}"
$sudo apt-get update -q >/dev/null || echo "apt-get update failed; trying the package lists already here" >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null

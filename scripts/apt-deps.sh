#!/usr/bin/env bash
# The Debian packages the project needs, by group, in one place; installs only what is missing,
# with one `apt-get update` and one `apt-get install` however many groups are named (apt keeps
# its downloads in /var/cache/apt, so repeat runs on a machine are quick).
#
#   scripts/apt-deps.sh                 # build: what `cargo build` needs (libclang-dev: v4l's bindgen)
#   scripts/apt-deps.sh test            # + the daemon tests' real broker and TLS certificates,
#                                       #   and photos that are not dermoscopy (mate-backgrounds)
#   scripts/apt-deps.sh cross           # + the arm64 cross toolchain and QEMU user mode
#   scripts/apt-deps.sh vm              # + QEMU full-system and what builds the VM's initramfs
#   scripts/apt-deps.sh ood             # + the wallpapers `dermaedge-train ood-set` draws photos from
#
# Installs run without recommends: anything a script needs must be named here, not reached
# through a Recommends: (qemu-system-arm only recommends ipxe-qemu's NIC ROMs; vm-test.sh
# boots without one). An `:arm64` package adds the arm64 architecture first.
#   scripts/apt-deps.sh --list GROUP... # print the packages instead (scripts/test-fresh.sh)
set -euo pipefail
list=0
[ "${1:-}" = --list ] && list=1 && shift
want=(libclang-dev)
for group in "$@"; do
    case "$group" in
    test) want+=(mosquitto mosquitto-clients openssl mate-backgrounds) ;;
    cross) want+=(rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu
        libc6-dev-arm64-cross libc6:arm64 qemu-user-static) ;;
    vm) want+=(qemu-system-arm kmod cpio mosquitto mosquitto-clients) ;;
    ood) want+=(mate-backgrounds sway-backgrounds lomiri-wallpapers ukui-wallpapers
        gnome-backgrounds) ;;
    *) echo "apt-deps.sh: unknown group '$group' (want test, cross, vm or ood)" >&2 && exit 2 ;;
    esac
done
if [ $list -eq 1 ]; then
    printf '%s\n' "${want[@]}" | sort -u
    exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
update=0
for p in "${want[@]}"; do
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

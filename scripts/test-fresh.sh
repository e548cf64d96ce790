#!/usr/bin/env bash
# Run the test command as on a fresh machine, and time it: how CI fares when its machine is
# replaced. (The cold figure in the README comes from a machine that really was new.)
#
#   scripts/test-fresh.sh            # purge the Debian packages the scripts install, then run
#                                    # .ci/run in a new clone with empty caches
#   scripts/test-fresh.sh --keep-apt # the same without the purge (cargo, pip, VM caches only)
#
# What "fresh" means here:
# - the Debian packages that scripts/apt-deps.sh installs (every group) are purged, with the
#   packages only they pulled in, and apt's download cache is emptied; so is ipxe-qemu, whose
#   ROMs the VM test must not need. Packages a new machine already has (openssl) stay. If a
#   purge would take anything else with it, the script stops and names it.
# - cargo-deb (cross.sh installs it into ~/.cargo/bin) is uninstalled; CARGO_HOME (crates),
#   CARGO_TARGET_DIR (builds), the Python environment, pip's cache and
#   the VM test's downloads point at empty folders under one temporary directory.
# - the checkout is a new clone of HEAD with ../shared beside it, run with CI=true, as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
SHARED="$(cd .. && pwd)/shared"
keep_apt=0
[ "${1:-}" = --keep-apt ] && keep_apt=1
[ -d "$SHARED" ] || { echo "test-fresh: no $SHARED beside the checkout" >&2; exit 2; }

if [ $keep_apt -eq 0 ]; then
    # Present on a new machine of this kind: never purged.
    keep=(openssl)
    purge=()
    for p in $(scripts/apt-deps.sh --list test cross vm) ipxe-qemu; do
        [[ " ${keep[*]} " == *" $p "* ]] && continue
        dpkg -s "$p" >/dev/null 2>&1 && purge+=("$p")
    done
    # A new machine has no arm64 packages at all (apt-deps.sh adds the architecture).
    for p in $(dpkg-query -W -f='${binary:Package}\n' | grep ':arm64$' || true); do
        [[ " ${purge[*]} " == *" $p "* ]] || purge+=("$p")
    done
    if [ ${#purge[@]} -gt 0 ]; then
        others=$(apt-get -s purge "${purge[@]}" | awk '/^Purg /{print $2}' |
            grep -vxF -f <(printf '%s\n' "${purge[@]}") || true)
        if [ -n "$others" ]; then
            echo "test-fresh: purging would also remove: $others; purge by hand or use --keep-apt" >&2
            exit 2
        fi
        echo "== purging ${purge[*]}"
        # The arm64 copies of essential packages (zlib1g:arm64, ...) count as essential to apt;
        # the check above made sure that nothing but these packages goes.
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -q --allow-remove-essential \
            "${purge[@]}" >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get autoremove --purge -y -q >/dev/null
    fi
    dpkg --remove-architecture arm64 2>/dev/null || true
    apt-get clean
fi

# The cargo-deb that cross.sh installed into ~/.cargo/bin (a new machine has none).
if command -v cargo-deb >/dev/null; then
    cargo uninstall -q cargo-deb 2>/dev/null || rm -f "$(command -v cargo-deb)"
fi
FRESH="$(mktemp -d /tmp/dermaedge-fresh.XXXXXX)"
export CARGO_HOME="$FRESH/cargo" CARGO_TARGET_DIR="$FRESH/target"
export DERMAEDGE_VENV="$FRESH/venv" PIP_CACHE_DIR="$FRESH/pip"
export DERMAEDGE_VM_CACHE="$FRESH/vm" CI=true
# rustup's proxies (cargo, rustc) stay where they are; cargo-deb lands in the new CARGO_HOME.
PATH="$CARGO_HOME/bin:$PATH"
git clone -q "$REPO" "$FRESH/main"
ln -s "$SHARED" "$FRESH/shared"
echo "== fresh run in $FRESH (delete it afterwards)"
start=$(date +%s)
status=0
(cd "$FRESH/main" && bash .ci/run </dev/null) || status=$?
echo "== test-fresh: .ci/run exited $status after $(($(date +%s) - start)) s"
exit $status

#!/usr/bin/env bash
# Every test of the project, after installing what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each phase prints how long the run has taken so far: the README's cold and warm figures.
t0=$(date +%s)
phase() { echo "== [$(($(date +%s) - t0)) s] $*"; }
# Every Debian package of every suite in one apt run (the groups are listed in apt-deps.sh).
scripts/apt-deps.sh test cross vm
phase "Debian packages ready"
# The x86-64 test build compiles while the Python environment installs: on a fresh machine
# that is mostly PyTorch's download (~3 GB), which leaves the cores idle.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dermaedge/target}"
build_log="$(mktemp)"
cargo test --release --lib --tests --no-run >"$build_log" 2>&1 &
build_pid=$!
source scripts/env.sh
phase "Python environment ready"
if ! wait "$build_pid"; then
    cat "$build_log" >&2
    echo "test.sh: the x86-64 test build failed (log above)" >&2
    exit 1
fi
rm -f "$build_log"
phase "x86-64 test build ready"

phase "trainer: ruff"
ruff check trainer
ruff format --check trainer
phase "trainer: pytest"
python -m pytest trainer/tests

phase "device: cargo fmt, clippy"
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
phase "device: cargo test"
# One optimized build serves the tests and the binary (tract in debug is far too slow).
log="$(mktemp)"
cargo test --release --lib --tests 2>&1 | tee "$log"
passed=$(grep -o '[0-9]* passed' "$log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -o '[0-9]* failed' "$log" | awk '{s += $1} END {print s + 0}')
rm -f "$log"
echo "cargo: $passed passed, $failed failed"
phase "trainer + device: device-eval scores the models through the binary just built"
DERMAEDGE_BIN="$CARGO_TARGET_DIR/release/dermaedge" python -m pytest trainer/tests/test_device_eval.py \
    trainer/tests/test_oodset.py

phase "device, aarch64: the test suite under qemu-aarch64 (Cortex-A72), then the .deb"
scripts/cross.sh ci
phase "device, aarch64: full-system VM with the vivid camera driver"
scripts/vm-test.sh
phase "all test suites passed (trainer, device x86-64, device aarch64 under QEMU, vivid VM)"

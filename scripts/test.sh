#!/usr/bin/env bash
# Every test of the project, after installing what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
# mosquitto: the real broker the daemon tests start; openssl: their TLS test's certificates.
scripts/apt-deps.sh mosquitto mosquitto-clients openssl
source scripts/env.sh

echo "== trainer: ruff"
ruff check trainer
ruff format --check trainer
echo "== trainer: pytest"
python -m pytest trainer/tests

echo "== device: cargo fmt, clippy"
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
echo "== device: cargo test"
# One optimized build serves the tests and the binary (tract in debug is far too slow).
log="$(mktemp)"
cargo test --release --lib --tests 2>&1 | tee "$log"
passed=$(grep -o '[0-9]* passed' "$log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -o '[0-9]* failed' "$log" | awk '{s += $1} END {print s + 0}')
rm -f "$log"
echo "cargo: $passed passed, $failed failed"
echo "== trainer + device: device-eval scores the models through the binary just built"
DERMAEDGE_BIN="$CARGO_TARGET_DIR/release/dermaedge" python -m pytest trainer/tests/test_device_eval.py

echo "== device, aarch64: the test suite under qemu-aarch64 (Cortex-A72), then the .deb"
scripts/cross.sh ci
echo "== device, aarch64: full-system VM with the vivid camera driver"
scripts/vm-test.sh
echo "== all test suites passed (trainer, device x86-64, device aarch64 under QEMU, vivid VM)"

#!/usr/bin/env bash
# Every test of the project, after installing what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

echo "== trainer: ruff"
ruff check trainer
ruff format --check trainer
echo "== trainer: pytest"
python -m pytest trainer/tests

# Compiled dependencies live outside the checkout, so a fresh clone on the same machine (CI)
# rebuilds only this crate.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dermaedge/target}"
echo "== device: cargo fmt, clippy"
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
echo "== device: cargo test"
# One optimized build serves the tests and the binary (tract in debug is far too slow).
cargo test --release

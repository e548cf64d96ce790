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

echo "== device: cargo fmt, clippy"
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
echo "== device: cargo test"
# One optimized build serves the tests and the binary (tract in debug is far too slow).
cargo test --release

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

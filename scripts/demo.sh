#!/usr/bin/env bash
# The README's first command: the daemon on its embedded demo config (the bundled ISIC samples
# as a watched folder, results in demo-state/dermaedge.db, no camera, no broker), one pass.
# Installs the one build dependency a fresh Debian machine lacks (libclang-dev, for the v4l
# crate's bindgen) first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/apt-deps.sh
exec cargo run --release -- run --demo --once "$@"

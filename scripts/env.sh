# Sourced by the other scripts: make (once) and activate the Python environment the trainer
# and its tests need. The environment lives outside the checkout (default
# ~/.cache/dermaedge/venv) so that repeated runs and fresh clones reuse it; it is rebuilt when
# trainer/pyproject.toml changes.
VENV="${DERMAEDGE_VENV:-$HOME/.cache/dermaedge/venv}"
PY="${DERMAEDGE_PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
stamp="$(sha256sum trainer/pyproject.toml | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.dermaedge-stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "== setting up the Python environment in $VENV (PyTorch is large: minutes the first time)"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip setuptools
    "$VENV/bin/pip" install -q -e "trainer[test]"
    echo "$stamp" > "$VENV/.dermaedge-stamp"
fi
# Point the editable install at this checkout (cheap; no downloads).
if ! "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e trainer >"$VENV/.editable.log" 2>&1; then
    cat "$VENV/.editable.log" >&2
    return 1 2>/dev/null || exit 1
fi
export PATH="$VENV/bin:$PATH"
# Compiled Rust dependencies live outside the checkout too, so a fresh clone on the same
# machine (CI) rebuilds only this crate.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dermaedge/target}"

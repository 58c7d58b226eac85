# Shared by scripts/test and scripts/demo: make (once) a virtual environment with
# the project installed, torch pinned to the CPU wheel. Sourced, not run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
make_venv() {  # make_venv DIR EXTRAS
    local dir="$1" extras="$2"
    if [ ! -x "$dir/bin/python" ]; then
        "$PY" -m venv "$dir"
        "$dir/bin/python" -m pip install -q --upgrade pip
    fi
    # torch first and pinned, so nothing resolves it to a CUDA build
    "$dir/bin/python" -m pip install -q -c "$ROOT/constraints/core.txt" torch==2.13.0
    "$dir/bin/python" -m pip install -q -c "$ROOT/constraints/core.txt" -e "$ROOT[$extras]"
}

#!/bin/bash
# Runs in a fresh container with no network: install the repaired wheel, import its modules.
set -u
WHEEL="$1"; PYTAG="$2"; shift 2
SMOKEENV="${ARMWHEELS_SMOKEENV:-/tmp/smoke}"
step() { echo "::armwheels:: $*"; }
PY=""
if [ -x "/opt/python/${PYTAG}-${PYTAG}/bin/python" ]; then
    PY="/opt/python/${PYTAG}-${PYTAG}/bin/python"
else
    PY=$(command -v "python${PYTAG:2:1}.${PYTAG:3}" || command -v python3)
fi
"$PY" -m venv "$SMOKEENV" || exit 14
"$SMOKEENV/bin/python" -m pip install --no-index --no-deps --quiet "$WHEEL" || exit 15
cd "$(dirname "$SMOKEENV")" || exit 14
for module in "$@"; do
    step "import $module"
    "$SMOKEENV/bin/python" -c "import importlib, sys; m = importlib.import_module(sys.argv[1]); print(m.__name__, getattr(m, '__file__', ''))" "$module" || exit 15
done
step "smoke test passed"

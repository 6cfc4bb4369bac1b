#!/bin/bash
# Runs in a fresh container with no network: install the repaired wheel, import its modules
# (its top-level packages and modules, then each extension module) in one interpreter.
set -u
WHEEL="$1"; PYTAG="$2"; shift 2
SMOKEENV="${ARMWHEELS_SMOKEENV:-/tmp/smoke}"
PY=""
if [ -x "/opt/python/${PYTAG}-${PYTAG}/bin/python" ]; then
    PY="/opt/python/${PYTAG}-${PYTAG}/bin/python"
else
    PY=$(command -v "python${PYTAG:2:1}.${PYTAG:3}" || command -v python3)
fi
"$PY" -m venv "$SMOKEENV" || exit 14
# No cache: the build user's home is not writable here, and nothing is downloaded.
"$SMOKEENV/bin/python" -m pip install --no-index --no-deps --no-cache-dir --quiet "$WHEEL" || exit 15
cd "$(dirname "$SMOKEENV")" || exit 14
"$SMOKEENV/bin/python" - "$@" <<'PYTHON' || exit 15
import importlib
import sys

for name in sys.argv[1:]:
    print(f"::armwheels:: import {name}", flush=True)
    module = importlib.import_module(name)
    print(module.__name__, getattr(module, "__file__", ""), flush=True)
print("::armwheels:: smoke test passed", flush=True)
PYTHON

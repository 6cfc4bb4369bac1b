#!/bin/bash
# Runs in a fresh container (or sandbox) with no network: install the repaired wheel,
# import its modules (its top-level packages and modules, then each extension module) in
# one interpreter. With ARMWHEELS_SMOKE_SITE the builder has installed it already, on its
# host, into that folder: only the import runs here.
set -u
WHEEL="$1"; PYTAG="$2"; shift 2
SMOKEENV="${ARMWHEELS_SMOKEENV:-/tmp/smoke}"
PY=""
if [ -x "/opt/python/${PYTAG}-${PYTAG}/bin/python" ]; then
    PY="/opt/python/${PYTAG}-${PYTAG}/bin/python"
else
    PY=$(command -v "python${PYTAG:2:1}.${PYTAG:3}" || command -v python3)
fi
if [ -n "${ARMWHEELS_SMOKE_SITE:-}" ]; then
    # Isolated (-I) and without the image's own site-packages (-S), as in a fresh venv:
    # the import finds the wheel's folder and the standard library, nothing else.
    echo "::armwheels:: importing $WHEEL from the folder the builder installed it in"
    cd / || exit 14
    PYTHON_RUN=("$PY" -I -S)
else
    # A fresh venv without pip, the wheel installed by the image's tools pip (--python):
    # a venv with its own pip costs 15-20 s under QEMU. Elsewhere, a venv with its pip.
    TOOLS_PIP=/opt/armwheels-tools/bin/pip
    if [ -x "$TOOLS_PIP" ]; then
        "$PY" -m venv --without-pip "$SMOKEENV" || exit 14
        PIP=("$TOOLS_PIP" --python "$SMOKEENV/bin/python")
    else
        "$PY" -m venv "$SMOKEENV" || exit 14
        PIP=("$SMOKEENV/bin/python" -m pip)
    fi
    # No cache: the build user's home is not writable here, and nothing is downloaded.
    # The wheel's runtime requirements, when the builder could fetch them all, come from
    # its wheelhouse (an extension that imports numpy needs numpy to import).
    if [ -n "${ARMWHEELS_SMOKE_LINKS:-}" ] && "${PIP[@]}" install --no-index --no-cache-dir \
            --quiet --find-links "$ARMWHEELS_SMOKE_LINKS" "$WHEEL"; then
        echo "::armwheels:: installed with its requirements"
    else
        "${PIP[@]}" install --no-index --no-deps --no-cache-dir --quiet "$WHEEL" || exit 15
    fi
    cd "$(dirname "$SMOKEENV")" || exit 14
    PYTHON_RUN=("$SMOKEENV/bin/python")
fi
"${PYTHON_RUN[@]}" - "$@" <<'PYTHON' || exit 15
import importlib
import os
import sys

if os.environ.get("ARMWHEELS_SMOKE_SITE"):
    import site  # -S: imported for addsitedir alone, the image's site-packages stay out

    site.addsitedir(os.environ["ARMWHEELS_SMOKE_SITE"])  # its .pth files too
for name in sys.argv[1:]:
    print(f"::armwheels:: import {name}", flush=True)
    module = importlib.import_module(name)
    print(module.__name__, getattr(module, "__file__", ""), flush=True)
print("::armwheels:: smoke test passed", flush=True)
PYTHON

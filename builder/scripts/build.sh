#!/bin/bash
# Runs inside a throw-away build container: sdist -> wheel -> auditwheel repair.
# Exit codes tell the builder which step failed (see builder/classify.py).
set -u
SDIST="$1"; PYTAG="$2"; POLICY="$3"
# Containers use the defaults; the native backend points these into its work directory.
OUT="${ARMWHEELS_OUT:-/armwheels/out}"
BUILDENV="${ARMWHEELS_BUILDENV:-/tmp/buildenv}"
export PATH="$PATH:/opt/armwheels-tools/bin"
step() { echo "::armwheels:: $*"; }

PY=""
if [ -x "/opt/python/${PYTAG}-${PYTAG}/bin/python" ]; then
    PY="/opt/python/${PYTAG}-${PYTAG}/bin/python"
else
    for candidate in "python${PYTAG:2:1}.${PYTAG:3}" python3 python; do
        found=$(command -v "$candidate") || continue
        case "$found" in "$BUILDENV"/*) continue ;; esac
        tag=$("$found" -c 'import sys; print("cp%d%d" % sys.version_info[:2])') || continue
        if [ "$tag" = "$PYTAG" ]; then PY="$found"; break; fi
    done
fi
if [ -z "$PY" ]; then step "no interpreter for $PYTAG"; exit 10; fi
step "interpreter $PY ($("$PY" --version 2>&1)) on $(uname -m)"

"$PY" -m venv "$BUILDENV" || exit 14
step "building wheel from $(basename "$SDIST")"
"$BUILDENV/bin/python" -m pip wheel --no-deps --wheel-dir "$OUT/dist" "$SDIST" || exit 11
WHEEL=$(ls "$OUT"/dist/*.whl 2>/dev/null | head -n 1)
if [ -z "$WHEEL" ]; then step "no wheel produced"; exit 11; fi
case "$WHEEL" in
    *-none-any.whl) step "pure-Python wheel $(basename "$WHEEL")"; exit 12 ;;
esac

AUDITWHEEL=$(command -v auditwheel) || { step "auditwheel not found in image"; exit 14; }
step "auditwheel show"
"$AUDITWHEEL" show "$WHEEL"
step "auditwheel repair --plat $POLICY"
"$AUDITWHEEL" repair --plat "$POLICY" --wheel-dir "$OUT/wheelhouse" "$WHEEL" || exit 13
step "repaired: $(ls "$OUT/wheelhouse")"

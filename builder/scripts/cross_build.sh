#!/bin/bash
# Runs inside a throw-away cross container (the builder host's arch): sdist -> wheel for
# the target arch with a cross compiler (cross_build.py), then the repair build.sh does,
# with the target's libraries. Exit codes as build.sh's (see builder/classify.py).
set -u
SDIST="$1"; PYTAG="$2"; POLICY="$3"; ARCH="$4"; TRIPLET="$5"
SYSROOT="${ARMWHEELS_SYSROOT:?}"
OUT="${ARMWHEELS_OUT:-/armwheels/work/out}"
BUILDENV="${ARMWHEELS_BUILDENV:-/armwheels/work/buildenv}"
TOOLS=/opt/armwheels-tools
export PATH="$PATH:$TOOLS/bin"
step() { echo "::armwheels:: $*"; }

PY=$(command -v "python${PYTAG:2:1}.${PYTAG:3}") || { step "no host interpreter for $PYTAG"; exit 10; }
step "cross build: host interpreter $PY ($("$PY" --version 2>&1)) on $(uname -m), target $ARCH"
step "running as uid $(id -u)"
mkdir -p "$OUT/dist" "${HOME:?}" "${TMPDIR:-/tmp}" || exit 14
# Without pip: the tools venv's pip installs into it (--python), a second saved.
"$PY" -m venv --without-pip "$BUILDENV" || exit 14
if [ -n "${PIP_FIND_LINKS:-}" ]; then
    step "build dependencies offered from the host wheelhouse ($(ls "$PIP_FIND_LINKS" | wc -l) wheels)"
fi
"$TOOLS/bin/python" "$(dirname "$0")/cross_build.py" "$SDIST" "$BUILDENV/bin/python" \
    "$OUT/dist" "$ARCH" "$TRIPLET" "$SYSROOT" || exit $?
WHEEL=$(ls "$OUT"/dist/*.whl 2>/dev/null | head -n 1)
if [ -z "$WHEEL" ]; then step "no wheel produced"; exit 11; fi
case "$WHEEL" in
    *-none-any.whl) step "pure-Python wheel $(basename "$WHEEL")"; exit 12 ;;
esac
. "$(dirname "$0")/target_auditwheel.sh"
. "$(dirname "$0")/repair.sh"

#!/bin/bash
# Runs inside a throw-away build container: sdist -> wheel -> auditwheel repair.
# Exit codes tell the builder which step failed (see builder/classify.py).
set -u
SDIST="$1"; PYTAG="$2"; POLICY="$3"
# Everything the build writes lives under its work directory, whose size the builder
# caps: containers use the defaults, the native backend points these into its own.
OUT="${ARMWHEELS_OUT:-/armwheels/work/out}"
BUILDENV="${ARMWHEELS_BUILDENV:-/armwheels/work/buildenv}"
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

step "running as uid $(id -u)"
mkdir -p "$OUT/dist" "${HOME:?}" "${TMPDIR:-/tmp}" || exit 14
# The image's tools venv has a pip (23+) that builds with any interpreter (--python):
# no venv with its own pip per build, which costs 15-20 s under QEMU. A recipe's own
# build command gets the full venv it may call pip in.
TOOLS_PIP=/opt/armwheels-tools/bin/pip
if [ -x "$TOOLS_PIP" ] && [ -z "${ARMWHEELS_BUILD_COMMAND:-}" ]; then
    PIP=("$TOOLS_PIP" --python "$PY")
else
    "$PY" -m venv "$BUILDENV" || exit 14
    PIP=("$BUILDENV/bin/python" -m pip)
fi
if [ -n "${ARMWHEELS_EGRESS_SOCKET:-}" ]; then
    # Egress build: the container has no network; a relay on its own loopback hands the
    # build's proxy connections to the builder's filtering proxy (a mounted unix socket).
    READY="${TMPDIR:-/tmp}/egress-ready"
    "$PY" "$(dirname "$0")/egress_forward.py" "$ARMWHEELS_EGRESS_SOCKET" \
        "${ARMWHEELS_EGRESS_PORT:?}" "$READY" &
    for _ in $(seq 1 300); do [ -e "$READY" ] && break; sleep 0.1; done
    [ -e "$READY" ] || { step "the egress relay did not start"; exit 14; }
    step "egress through the builder's proxy at 127.0.0.1:$ARMWHEELS_EGRESS_PORT"
fi
if [ -n "${PIP_FIND_LINKS:-}" ]; then
    step "build dependencies offered from the wheelhouse ($(ls "$PIP_FIND_LINKS" | wc -l) wheels)"
fi
if [ -n "${ARMWHEELS_BUILD_COMMAND:-}" ]; then
    # The operator's recipe: same interpreter, same output folder.
    step "building wheel from $(basename "$SDIST") with the recipe's command"
    export SDIST ARMWHEELS_DIST="$OUT/dist" PATH="$BUILDENV/bin:$PATH"
    (cd "$HOME" && bash -c "$ARMWHEELS_BUILD_COMMAND") || exit 11
else
    step "building wheel from $(basename "$SDIST")"
    STARTED=$EPOCHREALTIME
    # --use-pep517: an isolated build for setup.py-only sdists too, as pip does today.
    "${PIP[@]}" wheel --use-pep517 --no-deps --wheel-dir "$OUT/dist" "$SDIST" || exit 11
    # pip's isolated environment included: the emulated path cannot tell them apart.
    step "compile step: $(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $STARTED }") s"
fi
WHEEL=$(ls "$OUT"/dist/*.whl 2>/dev/null | head -n 1)
if [ -z "$WHEEL" ]; then step "no wheel produced"; exit 11; fi
case "$WHEEL" in
    *-none-any.whl) step "pure-Python wheel $(basename "$WHEEL")"; exit 12 ;;
esac
if [ "${ARMWHEELS_REPAIR:-}" = elsewhere ]; then
    # The builder repairs it in a container of its own (repair_wheel.sh), natively.
    step "built $(basename "$WHEEL")"
    exit 0
fi

. "$(dirname "$0")/repair.sh"

#!/bin/bash
# Repairs the wheel a build left in $OUT/dist, in a container of its own: the cross
# image's (natively, for the target ARCH with TRIPLET's libraries from the sysroot) or,
# without ARCH, the target's own image. Exit codes as build.sh's (builder/classify.py).
set -u
POLICY="$1"; ARCH="${2:-}"; TRIPLET="${3:-}"
OUT="${ARMWHEELS_OUT:-/armwheels/work/out}"
export PATH="$PATH:/opt/armwheels-tools/bin"
step() { echo "::armwheels:: $*"; }

WHEEL=$(ls "$OUT"/dist/*.whl 2>/dev/null | head -n 1)
if [ -z "$WHEEL" ]; then step "no wheel to repair"; exit 11; fi
if [ -n "$ARCH" ]; then
    step "repairing $(basename "$WHEEL") for $ARCH on $(uname -m)"
    . "$(dirname "$0")/target_auditwheel.sh"
fi
. "$(dirname "$0")/repair.sh"

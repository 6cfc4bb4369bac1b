# Sourced by build.sh and cross_build.sh once the wheel is built: auditwheel shows and
# repairs $WHEEL for $POLICY into $OUT/wheelhouse. Exit code 13: it could not.
# $AUDITWHEEL, when set, is the command to run (the cross path's, for another arch).
if [ -z "${AUDITWHEEL:-}" ]; then
    AUDITWHEEL=$(command -v auditwheel) || { step "auditwheel not found in image"; exit 14; }
fi
step "auditwheel show"
$AUDITWHEEL show "$WHEEL"
step "auditwheel repair --plat $POLICY"
if ! $AUDITWHEEL repair --plat "$POLICY" --wheel-dir "$OUT/wheelhouse" "$WHEEL"; then
    # Native builds only: the host's glibc is newer than the target policy's.
    [ -n "${ARMWHEELS_FALLBACK_POLICY:-}" ] || exit 13
    step "the wheel does not meet $POLICY; auditwheel repair --plat $ARMWHEELS_FALLBACK_POLICY"
    rm -rf "$OUT/wheelhouse"
    $AUDITWHEEL repair --plat "$ARMWHEELS_FALLBACK_POLICY" --wheel-dir "$OUT/wheelhouse" "$WHEEL" || exit 13
fi
step "repaired: $(ls "$OUT/wheelhouse")"

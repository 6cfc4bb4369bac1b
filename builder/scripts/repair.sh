# Sourced by build.sh and cross_build.sh once the wheel is built: auditwheel shows and
# repairs $WHEEL for $POLICY into $OUT/wheelhouse; a distribution target's linux_* wheel
# is tagged instead, and its packages listed in $OUT/system-packages.txt. Exit code 13:
# it could not.
# $AUDITWHEEL, when set, is the command to run (the cross path's, for another arch).
case "$POLICY" in
    linux_*)
        # A distribution target: its wheels are this distribution's own, tagged with its
        # machines and served by its own index; no manylinux repair applies.
        step "distribution target: tagging $POLICY, recording the packages it links"
        rm -rf "$OUT/wheelhouse"
        "${PY:-python3}" "$(dirname "${BASH_SOURCE[0]}")/distribution_wheel.py" "$WHEEL" \
            "$POLICY" "$OUT/wheelhouse" "$OUT/system-packages.txt" || exit 13
        step "repaired: $(ls "$OUT/wheelhouse")"
        return 0 2>/dev/null || exit 0
        ;;
esac
if [ -z "${AUDITWHEEL:-}" ]; then
    AUDITWHEEL=$(command -v auditwheel) || { step "auditwheel not found in image"; exit 14; }
fi
step "auditwheel show"
$AUDITWHEEL show "$WHEEL"
step "auditwheel repair --plat $POLICY"
if ! $AUDITWHEEL repair --plat "$POLICY" --wheel-dir "$OUT/wheelhouse" "$WHEEL"; then
    # The target's newer_policy: a wheel that meets only a newer policy (its symbols
    # need a newer glibc) is published under the most compatible one it meets, or failed.
    if [ "${ARMWHEELS_NEWER_POLICY:-fail}" != publish ]; then
        step "the wheel does not meet $POLICY, and this target fails a wheel that meets only a newer policy"
        exit 13
    fi
    step "the wheel does not meet $POLICY; this target publishes it under the policy it meets: auditwheel repair --plat auto"
    rm -rf "$OUT/wheelhouse"
    $AUDITWHEEL repair --plat auto --wheel-dir "$OUT/wheelhouse" "$WHEEL" || exit 13
fi
step "repaired: $(ls "$OUT/wheelhouse")"

# Sourced where auditwheel runs on the builder's host arch for another (the cross
# image): $ARCH and $TRIPLET name the target, $ARMWHEELS_SYSROOT holds its tree.
# auditwheel looks for the libraries to graft in the target's tree: a host library of
# the same name is of another machine, and lddtree passes it by.
SYSROOT="${ARMWHEELS_SYSROOT:?}"
export LD_LIBRARY_PATH="$SYSROOT/usr/lib/$TRIPLET:$SYSROOT/usr/lib:$SYSROOT/usr/local/lib"
AUDITWHEEL="/opt/armwheels-tools/bin/python $(dirname "${BASH_SOURCE[0]}")/auditwheel_for.py $ARCH"

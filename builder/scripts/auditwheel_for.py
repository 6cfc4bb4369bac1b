"""auditwheel for a target arch other than this machine's (the cross path repairs ARM
wheels on an x86_64 host): its command line offers only the host's policies, though
the repair itself reads the arch from the wheel. argv: the target arch, then
auditwheel's own arguments."""

import sys

from auditwheel.architecture import Architecture

TARGET = Architecture(sys.argv.pop(1))


def _target(*, bits: int | None = None) -> Architecture:
    return TARGET


Architecture.detect = staticmethod(_target)

from auditwheel.main import main  # noqa: E402  (it reads the arch when imported)

sys.exit(main())

"""The manylinux policy this host's own C library meets, as auditwheel defines policies.

A native builder compiles against the board's glibc, not a manylinux image's, so a wheel
it builds may call symbols newer than the job's target policy allows. Knowing the host's
own policy tells the builder whether that can happen at all, and which tag is honest
when it does.
"""

from __future__ import annotations

from dataclasses import dataclass

from auditwheel.architecture import Architecture
from auditwheel.error import InvalidLibcError
from auditwheel.libc import Libc
from auditwheel.policy import Policy, WheelPolicies
from packaging.version import InvalidVersion, Version


class UnknownPolicy(ValueError):
    """A policy name auditwheel does not know for this architecture."""


@dataclass(frozen=True)
class HostPolicy:
    """The newest manylinux policy whose glibc is not newer than this host's."""

    name: str  # e.g. manylinux_2_36_aarch64
    glibc: str  # the host's, e.g. 2.36
    policies: WheelPolicies

    def is_newer_than(self, policy_name: str) -> bool:
        """True when this host's glibc can produce symbols `policy_name` forbids (auditwheel
        ranks more compatible policies with a higher priority)."""
        mine: int = self._policy(self.name).priority
        theirs: int = self._policy(policy_name).priority
        return mine < theirs

    def _policy(self, name: str) -> Policy:
        try:
            return self.policies.get_policy_by_name(name)
        except (ValueError, LookupError) as exc:
            raise UnknownPolicy(f"auditwheel knows no policy {name!r} here") from exc


def _glibc_of(policy: Policy) -> Version | None:
    """The newest GLIBC symbol version a policy allows."""
    versions = []
    for text in policy.symbol_versions.get("GLIBC", ()):
        try:
            versions.append(Version(text))
        except InvalidVersion:
            continue
    return max(versions, default=None)


def detect_host_policy() -> HostPolicy | None:
    """This host's policy, or None on a C library auditwheel has no manylinux policy for
    (musl, or a glibc it cannot read)."""
    try:
        libc = Libc.detect()
        if libc is not Libc.GLIBC:
            return None
        current = libc.get_current_version()
        policies = WheelPolicies(libc=libc, arch=Architecture.detect())
    except (InvalidLibcError, ValueError, OSError):
        return None
    host = Version(f"{current.major}.{current.minor}")
    fitting = [
        (glibc, policy.priority, policy)
        for policy in policies
        if policy != policies.linux and (glibc := _glibc_of(policy)) is not None and glibc <= host
    ]
    if not fitting:
        return None
    # Newest glibc first; of policies adding no symbols past it (manylinux_2_37 on a 2.36
    # host), the most compatible, since pip here would refuse the other's tag.
    _, _, best = max(fitting, key=lambda item: (item[0], item[1]))
    return HostPolicy(best.name, str(host), policies)

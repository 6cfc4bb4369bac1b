"""What the master tells a builder about the job it claimed: the one wire definition.

The master answers a claim with it and the builder reads it back, so both sides use this
single model rather than each keeping a copy that can drift. Fields a newer master adds
are ignored by an older builder (a rolling upgrade must not stop the farm); a missing or
mistyped field is a validation error, never a half-filled job.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter
from pydantic.dataclasses import dataclass

from common.recipes import Recipe

# What becomes of a wheel that meets only a newer manylinux policy than its target's (its
# symbols need a newer glibc): published under the policy it meets, for the devices with
# that glibc, or failed as auditwheel-rejected. The target's setting (targets.<name>.
# newer_policy); builders follow it on every backend and the master checks it on upload.
NewerPolicy = Literal["publish", "fail"]
DEFAULT_NEWER_POLICY: NewerPolicy = "publish"


@dataclass(frozen=True, config=ConfigDict(extra="ignore"))
class JobSpec:
    job_id: int
    project: str
    version: str
    arch: str
    python_tag: str
    policy: str
    sdist_filename: str
    sdist_url: str
    sdist_sha256: str
    sdist_size: int | None
    attempt: int
    # The operator's recipe for the project (master.recipes), sent so that every builder
    # builds it the same way.
    recipe: Recipe | None = None
    # Why the master wants this job built under emulation, not cross-compiled (its
    # recipe says so, or the project's last cross build fell back); None: cross allowed.
    emulate_because: str | None = None
    # Added after emulate_because: a job from a master without it gets the default.
    newer_policy: NewerPolicy = DEFAULT_NEWER_POLICY
    # The configured target (targets.<name>) it is built for; empty from a master that
    # had none but its arches.
    target: str = ""

    @classmethod
    def from_json(cls, data: Any) -> JobSpec:
        """The spec in a claim's answer; pydantic.ValidationError (a ValueError) when the
        answer is not one."""
        return _ADAPTER.validate_python(data)


_ADAPTER: TypeAdapter[JobSpec] = TypeAdapter(JobSpec)

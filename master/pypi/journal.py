"""The vocabulary of PyPI's journal: what each changelog action means to the farm.

PyPI's changelog (XML-RPC `changelog_since_serial`) names each change with a free-text
action ("add source file foo-1.0.tar.gz", "yank release", "add Owner alice", ...). Every
action is classified here, once, so the feed either acts on it or counts it as ignored on
purpose; nothing falls through unnoticed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from common.names import BadName, normalize_project, parse_version

log = logging.getLogger(__name__)


class ActionKind(StrEnum):
    # Changes that alter what the farm builds or publishes.
    CREATE_PROJECT = "create-project"
    NEW_RELEASE = "new-release"
    ADD_SDIST = "add-sdist"
    ADD_WHEEL = "add-wheel"
    ADD_OTHER_FILE = "add-other-file"  # eggs, bdist_wininst, ...: recorded as upstream files
    REMOVE_FILE = "remove-file"
    REMOVE_RELEASE = "remove-release"
    REMOVE_PROJECT = "remove-project"
    YANK_RELEASE = "yank-release"
    UNYANK_RELEASE = "unyank-release"
    # Recorded and ignored on purpose: they change nothing we build or serve.
    ROLE_CHANGE = "role-change"
    DOCS = "docs"
    METADATA = "metadata"
    PUBLISHER = "publisher"
    UNKNOWN = "unknown"


ACTING_KINDS = frozenset(
    {
        ActionKind.CREATE_PROJECT,
        ActionKind.NEW_RELEASE,
        ActionKind.ADD_SDIST,
        ActionKind.ADD_WHEEL,
        ActionKind.ADD_OTHER_FILE,
        ActionKind.REMOVE_FILE,
        ActionKind.REMOVE_RELEASE,
        ActionKind.REMOVE_PROJECT,
        ActionKind.YANK_RELEASE,
        ActionKind.UNYANK_RELEASE,
    }
)
# Kinds that name a release: without a valid version they are malformed.
RELEASE_KINDS = ACTING_KINDS - {ActionKind.CREATE_PROJECT, ActionKind.REMOVE_PROJECT}

_ROLE_VERBS = ("add", "remove", "invite", "accepted", "revoke_invite", "decline_invite", "change")
_ROLES = ("Owner", "Maintainer")


@dataclass(frozen=True)
class JournalEvent:
    """One changelog entry, validated: `project` is the PEP 503 normal form."""

    serial: int
    project: str
    display_name: str
    version: str | None
    timestamp: int
    action: str
    kind: ActionKind
    filename: str | None = None


def classify(action: str) -> tuple[ActionKind, str | None]:
    """An action string's kind, and the filename it names for file actions."""
    if action == "create":
        return ActionKind.CREATE_PROJECT, None
    if action == "new release":
        return ActionKind.NEW_RELEASE, None
    if action == "remove release":
        return ActionKind.REMOVE_RELEASE, None
    if action == "remove project":
        return ActionKind.REMOVE_PROJECT, None
    if action == "yank release":
        return ActionKind.YANK_RELEASE, None
    if action == "unyank release":
        return ActionKind.UNYANK_RELEASE, None
    if action.startswith("remove file "):
        return ActionKind.REMOVE_FILE, action.removeprefix("remove file ").strip() or None
    words = action.split(" ")
    # "add {python_version} file {filename}": python_version is "source" for sdists.
    if len(words) == 4 and words[0] == "add" and words[2] == "file":
        filename = words[3]
        if words[1] == "source":
            return ActionKind.ADD_SDIST, filename
        if filename.endswith(".whl"):
            return ActionKind.ADD_WHEEL, filename
        return ActionKind.ADD_OTHER_FILE, filename
    if len(words) >= 3 and words[0] in _ROLE_VERBS and words[1] in _ROLES:
        return ActionKind.ROLE_CHANGE, None
    if action.startswith("docdestroy") or action.startswith("docupdate"):
        return ActionKind.DOCS, None
    if action.startswith(("update ", "rename ")):
        return ActionKind.METADATA, None
    if "trusted publisher" in action.lower() or "publisher" in action.lower():
        return ActionKind.PUBLISHER, None
    return ActionKind.UNKNOWN, None


def parse_entry(entry: Any) -> JournalEvent | int | None:
    """A validated event; the bare serial of an entry that is malformed but numbered
    (so the cursor can pass it); None when not even the serial can be read."""
    if not isinstance(entry, list | tuple) or len(entry) != 5:
        log.warning("malformed changelog entry skipped", extra={"entry": repr(entry)[:200]})
        return None
    name, version, timestamp, action, serial = entry
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
        log.warning("changelog entry without serial skipped", extra={"entry": repr(entry)[:200]})
        return None
    try:
        if not isinstance(action, str) or not isinstance(timestamp, int):
            raise BadName("bad action or timestamp")
        project = normalize_project(name)
        kind, filename = classify(action)
        if kind in RELEASE_KINDS:
            if not isinstance(version, str):
                raise BadName(f"{action!r} without a version")
            # One spelling per version everywhere: packaging's normal form.
            version = str(parse_version(version))
        elif version is not None and not isinstance(version, str):
            raise BadName("version is not a string")
        names_file = kind in (ActionKind.ADD_SDIST, ActionKind.ADD_WHEEL, ActionKind.REMOVE_FILE)
        if names_file and (not filename or "/" in filename or len(filename) > 300):
            raise BadName(f"bad filename in {action!r}")
    except BadName as exc:
        log.warning(
            "malformed changelog entry skipped: %s",
            exc,
            extra={"serial": serial, "project": repr(name)[:200]},
        )
        return serial
    return JournalEvent(
        serial=serial,
        project=project,
        display_name=name,
        version=version,
        timestamp=timestamp,
        action=action,
        kind=kind,
        filename=filename,
    )

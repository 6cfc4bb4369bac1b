"""Every action PyPI's journal emits is classified; malformed entries never pass silently."""

from __future__ import annotations

import pytest

from master.pypi.journal import ActionKind, JournalEvent, classify, parse_entry


@pytest.mark.parametrize(
    ("action", "kind", "filename"),
    [
        ("create", ActionKind.CREATE_PROJECT, None),
        ("new release", ActionKind.NEW_RELEASE, None),
        ("add source file demo-1.0.tar.gz", ActionKind.ADD_SDIST, "demo-1.0.tar.gz"),
        (
            "add cp311 file demo-1.0-cp311-cp311-manylinux_2_17_aarch64.whl",
            ActionKind.ADD_WHEEL,
            "demo-1.0-cp311-cp311-manylinux_2_17_aarch64.whl",
        ),
        (
            "add py3 file demo-1.0-py3-none-any.whl",
            ActionKind.ADD_WHEEL,
            "demo-1.0-py3-none-any.whl",
        ),
        ("add 2.7 file demo-1.0-py2.7.egg", ActionKind.ADD_OTHER_FILE, "demo-1.0-py2.7.egg"),
        ("remove file demo-1.0.tar.gz", ActionKind.REMOVE_FILE, "demo-1.0.tar.gz"),
        ("remove release", ActionKind.REMOVE_RELEASE, None),
        ("remove project", ActionKind.REMOVE_PROJECT, None),
        ("yank release", ActionKind.YANK_RELEASE, None),
        ("unyank release", ActionKind.UNYANK_RELEASE, None),
        ("add Owner alice", ActionKind.ROLE_CHANGE, None),
        ("remove Maintainer bob", ActionKind.ROLE_CHANGE, None),
        ("invite Maintainer carol", ActionKind.ROLE_CHANGE, None),
        ("accepted Maintainer carol", ActionKind.ROLE_CHANGE, None),
        ("revoke_invite Owner dave", ActionKind.ROLE_CHANGE, None),
        ("decline_invite Owner dave", ActionKind.ROLE_CHANGE, None),
        ("change Owner erin to Maintainer", ActionKind.ROLE_CHANGE, None),
        ("docdestroy", ActionKind.DOCS, None),
        ("update classifiers", ActionKind.METADATA, None),
        ("add Trusted Publisher GitHub org/repo", ActionKind.PUBLISHER, None),
        ("something PyPI invents next year", ActionKind.UNKNOWN, None),
    ],
)
def test_classify(action: str, kind: ActionKind, filename: str | None) -> None:
    assert classify(action) == (kind, filename)


def test_parse_entry_normalises_name_and_version() -> None:
    event = parse_entry(["Foo.Bar_baz", "1.0.0-RC1", 1700000000, "new release", 1234])
    assert isinstance(event, JournalEvent)
    assert (event.project, event.display_name, event.version) == (
        "foo-bar-baz",
        "Foo.Bar_baz",
        "1.0.0rc1",
    )
    assert event.kind is ActionKind.NEW_RELEASE and event.serial == 1234


@pytest.mark.parametrize(
    "entry",
    [
        ["demo", None, 1700000000, "new release", 7],  # a release action without a version
        ["demo", "not a version!", 1700000000, "new release", 7],
        ["-bad name-", "1.0", 1700000000, "new release", 7],
        ["demo", "1.0", "yesterday", "new release", 7],
        ["demo", "1.0", 1700000000, "add source file ../../etc/passwd", 7],
        ["demo", "1.0", 1700000000, None, 7],
    ],
)
def test_malformed_entries_keep_their_serial(entry: list[object]) -> None:
    # The cursor may move past them, but nothing is recorded from them.
    assert parse_entry(entry) == 7


@pytest.mark.parametrize(
    "entry",
    [
        None,
        "text",
        ["demo", "1.0", 1, "create"],
        ["demo", "1.0", 1, "create", "7"],
        [1, 2, 3, 4, -1],
    ],
)
def test_entries_without_serial_are_dropped(entry: object) -> None:
    assert parse_entry(entry) is None

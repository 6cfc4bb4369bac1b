from __future__ import annotations

import pytest

from common.names import BadName, normalize_project, parse_version, python_version_of_tag


@pytest.mark.parametrize(
    ("raw", "normal"),
    [("MsgPack", "msgpack"), ("Foo_Bar.baz", "foo-bar-baz"), ("a--b__c", "a-b-c"), ("X", "x")],
)
def test_normalize(raw: str, normal: str) -> None:
    assert normalize_project(raw) == normal


@pytest.mark.parametrize("raw", ["", "-lead", "trail-", "has space", "../etc", "a/b", "x" * 201])
def test_bad_names(raw: str) -> None:
    with pytest.raises(BadName):
        normalize_project(raw)


def test_versions_and_tags() -> None:
    assert str(parse_version("1.0.0rc1")) == "1.0.0rc1"
    with pytest.raises(BadName):
        parse_version("not a version")
    assert python_version_of_tag("cp311") == "3.11"
    assert python_version_of_tag("cp39") == "3.9"
    with pytest.raises(BadName):
        python_version_of_tag("abc")

from __future__ import annotations

import json
from datetime import UTC, datetime
from html.parser import HTMLParser

import pytest

from master.index.pages import (
    HTML_TYPE,
    JSON_TYPE,
    LEGACY_HTML,
    IndexFile,
    NotAcceptable,
    negotiate,
    render_project_html,
    render_project_json,
    render_root_html,
    render_root_json,
)

FILE = IndexFile(
    filename="demo-1.0-cp311-cp311-manylinux2014_aarch64.whl",
    url="../../files/demo/demo-1.0-cp311-cp311-manylinux2014_aarch64.whl",
    sha256="a" * 64,
    size=1234,
    requires_python=">=3.8,<4",
    metadata_sha256="b" * 64,
    upload_time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    yanked=False,
    version="1.0",
)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, LEGACY_HTML),
        ("*/*", LEGACY_HTML),
        (JSON_TYPE, JSON_TYPE),
        (f"{JSON_TYPE}, {HTML_TYPE};q=0.2, text/html;q=0.01", JSON_TYPE),
        (f"{JSON_TYPE};q=0.1, {HTML_TYPE}", HTML_TYPE),
        ("text/html", LEGACY_HTML),
        (f"{JSON_TYPE};q=0, text/html", LEGACY_HTML),
    ],
)
def test_negotiate(accept: str | None, expected: str) -> None:
    assert negotiate(accept) == expected


def test_negotiate_refuses() -> None:
    with pytest.raises(NotAcceptable):
        negotiate("application/xml")
    with pytest.raises(NotAcceptable):
        negotiate(None, "yaml")
    assert negotiate("text/html", "json") == JSON_TYPE


def test_project_json_follows_pep_691_and_700() -> None:
    body = json.loads(render_project_json("demo", [FILE], 42))
    assert body["meta"] == {"api-version": "1.1", "_last-serial": 42}
    assert body["versions"] == ["1.0"]
    [entry] = body["files"]
    assert entry["hashes"] == {"sha256": "a" * 64}
    assert entry["requires-python"] == ">=3.8,<4"
    assert entry["core-metadata"] == {"sha256": "b" * 64}
    # PEP 714: the old key never in JSON (pip 22.3 to 23.1 crash on it).
    assert "dist-info-metadata" not in entry
    assert entry["yanked"] is False
    assert entry["size"] == 1234
    assert entry["upload-time"] == "2026-01-02T03:04:05.000000Z"
    assert json.loads(render_root_json(["demo"]))["projects"] == [{"name": "demo"}]


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.found.append(dict(attrs))


def test_project_html_follows_pep_503_and_658() -> None:
    yanked = IndexFile(**{**FILE.__dict__, "filename": "demo-0.9-x.whl", "yanked": "broken"})
    parser = _Anchors()
    parser.feed(render_project_html("demo", [FILE, yanked]))
    first, second = parser.found
    assert first["href"] == f"{FILE.url}#sha256={'a' * 64}"
    assert first["data-requires-python"] == ">=3.8,<4"  # escaped in HTML, parsed back
    assert first["data-core-metadata"] == f"sha256={'b' * 64}"
    # PEP 714 lets HTML carry the legacy name too, and then it must match.
    assert first["data-dist-info-metadata"] == first["data-core-metadata"]
    assert "data-yanked" not in first
    assert second["data-yanked"] == "broken"
    assert "&gt;=3.8" in render_project_html("demo", [FILE])
    assert render_project_html("demo", [FILE], 42).endswith("<!--SERIAL 42-->\n")


@pytest.mark.parametrize("names", [["alpha", "beta-2", "zz9"], [], ["odd<name>", 'quo"te', "ünï"]])
def test_project_list_fast_path_renders_what_the_general_one_does(names: list[str]) -> None:
    """Plain normalised names skip per-name escaping; anything else is escaped; both give
    the same bytes json.dumps and escape() would."""
    body = json.loads(render_root_json(names))
    assert body == {"meta": {"api-version": "1.1"}, "projects": [{"name": n} for n in names]}
    assert render_root_json(names) == json.dumps(body, sort_keys=True)
    parser = _Anchors()
    parser.feed(render_root_html(names))
    assert [anchor["href"] for anchor in parser.found] == [f"{n}/" for n in names]

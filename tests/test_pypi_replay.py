"""The PyPI replay server speaks PyPI's protocol and replays a consistent, realistic journal.

The farm's changelog client is tested against this server, so these tests pin what it
promises: PyPI's tuple shapes, paging, faults and JSON bodies, with the stdlib XML-RPC
client as a real client.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import tarfile
import xmlrpc.client
import zipfile
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import Version

from tests.pypi_replay import (
    RATE_LIMIT_TEXT,
    REQUIRED_KINDS,
    JournalEntry,
    ProjectState,
    ReleaseState,
    ReplayServer,
    ReplayState,
    action_kind,
    file_bytes,
    file_digests,
    generate_journal,
    replay_server,
    state_at,
)

EVENTS = 3000
SEED = 7


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    with replay_server(events=EVENTS, seed=SEED) as running:
        yield running


@pytest.fixture(scope="module")
def expected(server: ReplayServer) -> ReplayState:
    return state_at(server.journal)


def _proxy(server: ReplayServer) -> Any:
    """The stdlib client; typed Any because its results depend on the method called."""
    return server.proxy()


def _fault(call: Any) -> xmlrpc.client.Fault:
    with pytest.raises(xmlrpc.client.Fault) as caught:
        call()
    return caught.value


def _as_tuples(rows: list[list[Any]]) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in rows]


def _mangled(name: str) -> str:
    """Another spelling of `name` that normalises the same (PyPI answers it too)."""
    return name.upper().replace("-", "_").replace(".", "-")


# --- the generator -------------------------------------------------------------------------


def test_journal_is_deterministic_for_a_seed() -> None:
    first = generate_journal(800, 1)
    assert len(first) == 800
    assert first == generate_journal(800, 1)
    assert first != generate_journal(800, 2)
    assert all(isinstance(entry, JournalEntry) for entry in first)


def test_serials_increase_from_the_base_with_gaps_and_time_never_goes_back() -> None:
    journal = generate_journal(5000, 3, base_serial=40_000)
    serials = [entry.serial for entry in journal]
    assert serials[0] == 40_000
    steps = [b - a for a, b in itertools.pairwise(serials)]
    assert min(steps) >= 1
    assert any(step > 1 for step in steps)  # PyPI's ids are not contiguous
    stamps = [entry.timestamp for entry in journal]
    assert all(isinstance(stamp, int) for stamp in stamps)
    assert stamps == sorted(stamps)
    assert generate_journal(10, 3)[0].serial == 1000


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_every_action_kind_appears_in_2000_events(seed: int) -> None:
    kinds = {action_kind(entry.action) for entry in generate_journal(2000, seed)}
    assert set(REQUIRED_KINDS) <= kinds


@pytest.mark.parametrize("seed", range(8))
def test_every_action_kind_appears_in_1000_events(seed: int) -> None:
    kinds = {action_kind(entry.action) for entry in generate_journal(1000, seed)}
    assert set(REQUIRED_KINDS) <= kinds


def test_action_kinds() -> None:
    wheel = "foo-1.0-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
    assert action_kind("create") == "create"
    assert action_kind("add source file foo-1.0.tar.gz") == "add source file"
    assert action_kind(f"add cp311 file {wheel}") == "add binary wheel"
    assert action_kind("add py3 file foo-1.0-py3-none-any.whl") == "add pure wheel"
    assert action_kind("remove file foo-1.0.tar.gz") == "remove file"
    assert action_kind("change Owner alice to Maintainer") == "change Owner to Maintainer"
    assert action_kind("decline_invite Maintainer bob") == "decline_invite Maintainer"
    assert action_kind("add Trusted Publisher GitHub alice/foo") == "unknown"
    assert action_kind("update classifiers") == "unknown"


def test_journal_is_consistent_and_realistic() -> None:
    journal = generate_journal(20_000, 5)
    state = state_at(journal)  # raises JournalError on any inconsistent event
    kinds = Counter(action_kind(entry.action) for entry in journal)
    upload_kinds = (
        "create",
        "new release",
        "add source file",
        "add binary wheel",
        "add pure wheel",
    )
    uploads = sum(kinds[kind] for kind in upload_kinds)
    assert uploads > 0.85 * len(journal)
    others = len(journal) - uploads - kinds["add Owner"]  # every "create" adds its owner
    assert 0.01 * len(journal) < others < 0.1 * len(journal)
    assert 300 < len(state.projects) < 2000

    created: dict[str, list[str]] = {}
    for entry in journal:
        key = canonicalize_name(entry.name)
        if entry.action == "create":
            created.setdefault(key, []).append(entry.name)
    assert any(len(names) > 1 for names in created.values())  # removed, then created again

    names = [p.name for p in state.projects.values()]
    assert len({canonicalize_name(n) for n in names}) == len(names)
    assert any(n != n.lower() for n in names)
    assert any("." in n for n in names) and any("_" in n for n in names)
    squashed = {key.replace("-", "") for key in state.projects if "-" in key}
    assert squashed & set(state.projects)  # "foo-bar" and "foobar" both live, distinct

    profiles: Counter[str] = Counter()
    for project in state.projects.values():
        for release in project.releases.values():
            assert str(Version(release.version)) == release.version
            _check_filenames(project, release)
            profiles.update(_profile(release))
    for wanted in ("sdist-only", "wheel-only", "pure", "aarch64", "armv7l", "py>=3.12", "py>=3.8"):
        assert profiles[wanted] > 0, wanted


def _check_filenames(project: ProjectState, release: ReleaseState) -> None:
    underscored = project.normalized.replace("-", "_")
    for file in release.files.values():
        if file.packagetype == "sdist":
            assert file.filename == f"{underscored}-{release.version}.tar.gz"  # PEP 625
            name, version = parse_sdist_filename(file.filename)
        else:
            name, version, _build, tags = parse_wheel_filename(file.filename)
            assert file.filename.split("-")[2] == file.python_version
            assert {t.interpreter for t in tags} <= set(file.python_version.split("."))
        assert name == project.normalized
        assert str(version) == release.version


def _profile(release: ReleaseState) -> set[str]:
    files = release.files.values()
    sdists = [f for f in files if f.packagetype == "sdist"]
    wheels = [f.filename for f in files if f.packagetype == "bdist_wheel"]
    found = {f"py{release.requires_python}"} if release.requires_python else set()
    if sdists and not wheels:
        found.add("sdist-only")
    if wheels and not sdists:
        found.add("wheel-only")
    if sdists and any(w.endswith("-none-any.whl") for w in wheels):
        found.add("pure")
    if any("aarch64" in w for w in wheels):
        found.add("aarch64")
    if any("armv7l" in w for w in wheels):
        found.add("armv7l")
    return found


# --- XML-RPC -------------------------------------------------------------------------------


def test_last_serial_is_the_journals_last(server: ReplayServer) -> None:
    assert _proxy(server).changelog_last_serial() == server.journal[-1].serial


def test_changelog_since_serial_returns_pypi_tuples(server: ReplayServer) -> None:
    rows = _proxy(server).changelog_since_serial(0)
    assert _as_tuples(rows) == [entry.as_tuple() for entry in server.journal]
    for name, version, timestamp, action, serial in rows:
        assert isinstance(name, str) and isinstance(action, str)
        assert version is None or isinstance(version, str)
        assert isinstance(timestamp, int) and isinstance(serial, int)
    assert any(row[1] is None for row in rows)  # <nil/> for project-level actions
    middle = server.journal[EVENTS // 2].serial
    assert [row[4] for row in _proxy(server).changelog_since_serial(middle)] == [
        entry.serial for entry in server.journal if entry.serial > middle
    ]


def test_paging_covers_the_journal_without_gap_or_duplicate(server: ReplayServer) -> None:
    server.set_faults(page_limit=700)
    try:
        proxy = _proxy(server)
        pages: list[list[tuple[Any, ...]]] = []
        since = 0
        while page := _as_tuples(proxy.changelog_since_serial(since)):
            assert len(page) <= 700
            assert [row[4] for row in page] == sorted(row[4] for row in page)
            assert page[0][4] > since
            pages.append(page)
            since = page[-1][4]
    finally:
        server.set_faults(page_limit=50_000)
    assert [len(page) for page in pages[:-1]] == [700] * (len(pages) - 1)
    assert [row for page in pages for row in page] == [e.as_tuple() for e in server.journal]


def test_changelog_filters_by_timestamp(server: ReplayServer) -> None:
    since = server.journal[EVENTS // 3].timestamp
    later = [entry.as_tuple() for entry in server.journal if entry.timestamp > since]
    proxy = _proxy(server)
    assert _as_tuples(proxy.changelog(since)) == [row[:4] for row in later]
    assert _as_tuples(proxy.changelog(since, True)) == later


def test_list_packages_with_serial(server: ReplayServer, expected: ReplayState) -> None:
    listed = _proxy(server).list_packages_with_serial()
    assert listed == {p.name: p.last_serial for p in expected.projects.values()}


def test_faults_match_pypi(server: ReplayServer) -> None:
    proxy = _proxy(server)
    fault = _fault(lambda: proxy.no_such_method())
    assert (fault.faultCode, fault.faultString) == (
        -32601,
        "server error; requested method not found",
    )
    for bad in (
        lambda: proxy.changelog_since_serial("12"),
        lambda: proxy.changelog_since_serial(),
        lambda: proxy.changelog_since_serial(1, 2),
        lambda: proxy.changelog(0, "yes"),
    ):
        fault = _fault(bad)
        assert fault.faultCode == -32602
        assert fault.faultString.startswith("client error; ")
    response = httpx.post(server.xmlrpc_url, content=b"this is not xml", timeout=30)
    assert response.status_code == 200
    fault = _fault(lambda: xmlrpc.client.loads(response.content))
    assert (fault.faultCode, fault.faultString) == (-32700, "parse error; not well formed")


def test_rate_limit_and_503_then_recovery(server: ReplayServer) -> None:
    proxy = _proxy(server)
    server.set_faults(rate_limit_next=2, rate_limit_reset=17)
    for _ in range(2):
        fault = _fault(lambda: proxy.changelog_last_serial())
        assert fault.faultCode == -32500
        assert fault.faultString == RATE_LIMIT_TEXT.format(seconds=17)
        assert fault.faultString.startswith("HTTPTooManyRequests: The action could not be")
    assert proxy.changelog_last_serial() == server.journal[-1].serial
    server.set_faults(http_503_next=1)
    with pytest.raises(xmlrpc.client.ProtocolError) as caught:
        proxy.changelog_last_serial()
    assert caught.value.errcode == 503
    assert proxy.changelog_last_serial() == server.journal[-1].serial
    assert server.status()["rate_limit_next"] == 0


@pytest.mark.parametrize("path", ["/pypi", "/pypi/", "/RPC2"])
def test_get_on_the_endpoint_is_405(server: ReplayServer, path: str) -> None:
    assert httpx.get(f"{server.url}{path}", timeout=30).status_code == 405


def test_all_endpoints_answer_xmlrpc(server: ReplayServer) -> None:
    for path in ("/pypi/", "/RPC2"):
        proxy = xmlrpc.client.ServerProxy(f"{server.url}{path}", allow_none=True)
        assert proxy.changelog_last_serial() == server.journal[-1].serial


# --- JSON API, files and Simple API ----------------------------------------------------------


def _get_json(server: ReplayServer, path: str, status: int = 200) -> Any:
    response = httpx.get(f"{server.url}{path}", timeout=30)
    assert response.status_code == status, path
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def _with_sdist_and_wheels(state: ReplayState) -> tuple[ProjectState, ReleaseState]:
    """Prefer a display name that is not normalised, to exercise the lookup too."""
    found: list[tuple[ProjectState, ReleaseState]] = []
    for project in state.projects.values():
        latest = project.latest()
        if latest is None:
            continue
        types = {f.packagetype for f in latest.files.values()}
        if types == {"sdist", "bdist_wheel"} and len(latest.files) >= 3:
            found.append((project, latest))
    assert found, "no project with an sdist and wheels"
    return next((pair for pair in found if pair[0].name != pair[0].normalized), found[0])


def test_json_api_for_a_project_with_sdist_and_wheels(
    server: ReplayServer, expected: ReplayState
) -> None:
    project, latest = _with_sdist_and_wheels(expected)
    response = httpx.get(f"{server.url}/pypi/{project.name}/json", timeout=30)
    assert response.status_code == 200
    assert response.headers["X-PyPI-Last-Serial"] == str(project.last_serial)
    body = response.json()
    assert set(body) >= {"info", "last_serial", "releases", "urls", "vulnerabilities"}
    assert body["info"]["name"] == project.name
    assert body["info"]["version"] == latest.version
    assert body["info"]["requires_python"] == latest.requires_python
    assert body["info"]["yanked"] is False
    assert body["last_serial"] == project.last_serial
    assert set(body["releases"]) == set(project.releases)
    assert [f["filename"] for f in body["urls"]] == sorted(latest.files)
    assert body["releases"][latest.version] == body["urls"]
    for entry in body["urls"]:
        data = httpx.get(entry["url"], timeout=30).content
        assert entry["url"].startswith(f"{server.url}/packages/")
        assert entry["size"] == len(data)
        assert entry["digests"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["digests"]["md5"] == hashlib.md5(data, usedforsecurity=False).hexdigest()
        assert entry["digests"]["blake2b_256"] == hashlib.blake2b(data, digest_size=32).hexdigest()
        state_file = latest.files[entry["filename"]]
        assert entry["packagetype"] == state_file.packagetype
        assert entry["python_version"] == state_file.python_version
        assert entry["yanked"] is False and entry["yanked_reason"] is None
        assert entry["upload_time_iso_8601"].startswith(entry["upload_time"] + ".")
        assert entry["upload_time_iso_8601"].endswith("Z")
        if entry["packagetype"] == "sdist":
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                assert any(name.endswith("/PKG-INFO") for name in tar.getnames())
        else:
            with zipfile.ZipFile(io.BytesIO(data)) as wheel:
                assert any(name.endswith(".dist-info/WHEEL") for name in wheel.namelist())
    other = _get_json(server, f"/pypi/{_mangled(project.name)}/json")
    assert other == body
    release = _get_json(server, f"/pypi/{project.name}/{latest.version}/json")
    assert release["info"]["version"] == latest.version
    assert release["urls"] == body["urls"]
    assert release["last_serial"] == project.last_serial


def test_file_bytes_are_a_function_of_the_filename() -> None:
    name = "foo_bar-1.0-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
    assert file_bytes(name) == file_bytes(name)
    assert file_digests(name).sha256 == hashlib.sha256(file_bytes(name)).hexdigest()
    assert file_bytes("foo_bar-1.0.tar.gz") != file_bytes("foo_bar-1.1.tar.gz")


def test_removed_project_is_404(server: ReplayServer, expected: ReplayState) -> None:
    assert expected.removed
    key = sorted(expected.removed)[0]
    assert _get_json(server, f"/pypi/{key}/json", 404) == {"message": "Not Found"}
    assert httpx.get(f"{server.url}/simple/{key}/", timeout=30).status_code == 404
    removed_files = [
        entry.action.split(" ")[-1]
        for entry in server.journal
        if canonicalize_name(entry.name) == key and action_kind(entry.action).startswith("add ")
        if entry.action.split(" ")[-1].endswith((".whl", ".tar.gz"))
    ]
    assert removed_files
    for filename in removed_files[:3]:
        assert httpx.get(f"{server.url}/packages/{filename}", timeout=30).status_code == 404
    assert key not in {canonicalize_name(n) for n in _proxy(server).list_packages_with_serial()}


def test_unknown_project_and_version_are_404(server: ReplayServer, expected: ReplayState) -> None:
    assert _get_json(server, "/pypi/no-such-project-here/json", 404) == {"message": "Not Found"}
    project, _latest = _with_sdist_and_wheels(expected)
    assert _get_json(server, f"/pypi/{project.name}/999.0.0/json", 404) == {"message": "Not Found"}


def test_yanked_release_is_flagged(server: ReplayServer, expected: ReplayState) -> None:
    yanked = [
        (project, release)
        for project in expected.projects.values()
        for release in project.releases.values()
        if release.yanked and release.files
    ]
    assert yanked
    project, release = yanked[0]
    body = _get_json(server, f"/pypi/{project.name}/{release.version}/json")
    assert body["info"]["yanked"] is True
    assert body["info"]["yanked_reason"] == release.yanked_reason
    assert body["urls"]
    assert all(f["yanked"] is True for f in body["urls"])
    assert all(f["yanked_reason"] == release.yanked_reason for f in body["urls"])
    whole = _get_json(server, f"/pypi/{project.name}/json")
    assert all(f["yanked"] is True for f in whole["releases"][release.version])
    if whole["info"]["version"] != release.version:  # yanked releases are not "latest"
        assert whole["info"]["yanked"] is False
    simple = httpx.get(f"{server.url}/simple/{project.normalized}/", timeout=30).json()
    flags = {f["yanked"] for f in simple["files"] if f["filename"] in release.files}
    assert flags == {release.yanked_reason or True}


def test_simple_api_is_pep_691(server: ReplayServer, expected: ReplayState) -> None:
    project, _latest = _with_sdist_and_wheels(expected)
    url = f"{server.url}/simple/{project.normalized}/"
    response = httpx.get(url, timeout=30)
    assert response.headers["content-type"] == "application/vnd.pypi.simple.v1+json"
    body = response.json()
    assert body["meta"] == {"api-version": "1.1", "_last-serial": project.last_serial}
    assert body["name"] == project.normalized
    files = {f for release in project.releases.values() for f in release.files}
    assert {f["filename"] for f in body["files"]} == files
    for entry in body["files"]:
        assert entry["hashes"]["sha256"] == file_digests(entry["filename"]).sha256
        assert entry["size"] == file_digests(entry["filename"]).size
    again = httpx.get(url, headers={"If-None-Match": response.headers["ETag"]}, timeout=30)
    assert again.status_code == 304


# --- the head --------------------------------------------------------------------------------


def test_set_head_hides_later_events() -> None:
    journal = generate_journal(1500, 11)
    head = journal[len(journal) // 2].serial - 1  # may fall in a gap
    with replay_server(events=1500, seed=11, head=head) as server:
        assert server.journal == journal
        assert server.status()["head"] == head
        proxy = _proxy(server)
        visible = [entry for entry in journal if entry.serial <= head]
        assert proxy.changelog_last_serial() == visible[-1].serial
        assert proxy.changelog_since_serial(visible[-1].serial) == []
        assert _as_tuples(proxy.changelog_since_serial(0)) == [e.as_tuple() for e in visible]
        at_head = state_at(journal, head)
        listed = proxy.list_packages_with_serial()
        assert listed == {p.name: p.last_serial for p in at_head.projects.values()}
        later = next(
            e
            for e in journal
            if e.serial > head and e.action == "create" and at_head.lookup(e.name) is None
        )
        assert _get_json(server, f"/pypi/{later.name}/json", 404) == {"message": "Not Found"}
        added = next(e for e in journal if e.serial > head and e.action.startswith("add source"))
        filename = added.action.split(" ")[-1]
        assert httpx.get(f"{server.url}/packages/{filename}", timeout=30).status_code == 404

        server.set_head(journal[-1].serial)
        assert proxy.changelog_last_serial() == journal[-1].serial
        assert later.name in proxy.list_packages_with_serial() or (
            state_at(journal).lookup(later.name) is None
        )

        early = journal[100].serial
        server.set_head(early)  # backwards: replayed from the start
        assert proxy.changelog_last_serial() == early
        listed = proxy.list_packages_with_serial()
        assert listed == {p.name: p.last_serial for p in state_at(journal, early).projects.values()}
        server.set_head(head)  # and forward again
        listed = proxy.list_packages_with_serial()
        assert listed == {p.name: p.last_serial for p in at_head.projects.values()}


def test_a_100k_replay_starts_and_serves_full_pages() -> None:
    with replay_server(events=100_000, seed=5) as server:
        proxy = _proxy(server)
        assert proxy.changelog_last_serial() == server.journal[-1].serial
        page = proxy.changelog_since_serial(0)
        assert len(page) == 50_000
        assert tuple(page[-1]) == server.journal[49_999].as_tuple()
        tail = server.journal[-20].serial
        assert _as_tuples(proxy.changelog_since_serial(tail)) == [
            e.as_tuple() for e in server.journal[-19:]
        ]
        assert 1000 <= len(proxy.list_packages_with_serial()) <= 10_000

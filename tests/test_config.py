from __future__ import annotations

from pathlib import Path

import pytest

from common.config import ConfigError, load_settings


def test_defaults_are_embedded(tmp_path: Path) -> None:
    settings = load_settings(None, master={"data_dir": tmp_path})
    assert settings.database.url == f"sqlite:///{tmp_path / 'armwheels.db'}"
    assert settings.broker.url == f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    assert settings.builder.master_url == "http://127.0.0.1:8980"
    assert list(settings.enabled_targets()) == ["aarch64"]


def test_toml_and_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "farm.toml"
    config.write_text(
        '[upstream]\nprojects = ["MsgPack", "Foo_Bar"]\npoll_interval = 60\n'
        '[master]\nport = 9000\npublic_url = "https://wheels.example.org/"\n'
    )
    monkeypatch.setenv("ARMWHEELS_UPSTREAM__POLL_INTERVAL", "5")
    settings = load_settings(config)
    assert settings.upstream.projects == ["foo-bar", "msgpack"]
    assert settings.upstream.poll_interval == 5
    assert settings.master.port == 9000
    assert settings.master.public_url == "https://wheels.example.org"
    assert settings.builder.master_url == "https://wheels.example.org"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[master]\nport = 0\n", "master.port"),
        ("[master]\nprot = 80\n", "master.prot: unknown setting"),
        ("[upstream]\nindex_url = 'ftp://x'\n", "upstream.index_url"),
        ("[upstream]\nprojects = ['ok', 'bad name!']\n", "invalid project name"),
        ("[upstream]\nprojects = 'all'\n", 'projects = "all" needs feed = "changelog"'),
        ("[upstream]\nfeed = 'rss'\n", "upstream.feed"),
        ("[upstream]\nxmlrpc_url = 'pypi.org/pypi'\n", "upstream.xmlrpc_url"),
        ("[upstream]\nchangelog_start = -1\n", "upstream.changelog_start"),
        ("[master]\nqueue_depth = 0\n", "master.queue_depth"),
        ("[targets.x86_64]\nimage = 'i'\npolicy = 'manylinux2014_x86_64'\n", "names no arch"),
        (
            "[targets.pc]\narch = 'x86_64'\nimage = 'i'\npolicy = 'manylinux2014_x86_64'\n",
            "targets.pc.arch",
        ),
        (
            "[targets.Big]\narch = 'aarch64'\nimage = 'i'\npolicy = 'manylinux2014_aarch64'\n",
            "target name",
        ),
        (
            "[targets.aarch64]\nimage = 'i'\npolicy = 'manylinux2014_armv7l'\n",
            "is not a manylinux policy for aarch64",
        ),
        (
            "[targets.aarch64]\nimage='i'\npolicy='manylinux2014_aarch64'\npython_tags=['x']\n",
            "invalid python tag",
        ),
        ("[builder]\nca_bundle = '/nonexistent/ca.pem'\n", "file not found"),
        ("[master\nport = 1\n", "not valid TOML"),
    ],
)
def test_bad_values_give_one_line(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "farm.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_bad_environment_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARMWHEELS_BUILDER__BUILD_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match=r"\(environment\): builder.build_timeout"):
        load_settings(None)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(Path("/nonexistent/armwheels.toml"))


def test_the_example_configuration_loads_as_documented() -> None:
    example = Path(__file__).parent.parent / "docs" / "example.toml"
    settings = load_settings(example)
    assert {name: (t.arch, t.suite, t.python_tags) for name, t in settings.targets.items()} == {
        "aarch64": ("aarch64", "bookworm", ["cp311"]),
        "aarch64-bullseye": ("aarch64", "bullseye", ["cp39"]),
        "aarch64-trixie": ("aarch64", "trixie", ["cp313"]),
        "armv7l": ("armv7l", "bullseye", ["cp39"]),
        "armv7l-bookworm": ("armv7l", "bookworm", ["cp311"]),
        "armv7l-trixie": ("armv7l", "trixie", ["cp313"]),
    }
    # The shipped defaults are the same targets: copying a table turns one on as shipped.
    defaults = load_settings(None).targets
    assert {n: t.model_dump() for n, t in defaults.items()} == {
        n: t.model_dump() for n, t in settings.targets.items()
    }

"""Recipes: validated as untrusted input, re-read on change, a broken edit never in force."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from armwheels.cli import main
from common.config import ConfigError, Settings, load_settings
from common.db import transaction
from common.job_spec import JobSpec
from common.recipes import RecipeBook, RecipeError, parse_recipes
from common.states import TokenRole
from master.auth import create_token
from master.web.app import create_app
from tests.seed import add_release

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "recipes.toml"


def test_the_shipped_example_parses() -> None:
    recipes = parse_recipes(EXAMPLE.read_text())
    assert recipes["python-lzo"].apt == ["liblzo2-dev"]
    assert recipes["pyyaml"].applies_to("5.4.1")
    assert not recipes["pyyaml"].applies_to("6.0.2")


def test_names_are_normalised_and_packages_chosen_by_package_manager() -> None:
    recipes = parse_recipes('[recipes."Python_LZO"]\napt = ["b", "a", "a"]\nyum = ["lzo-devel"]\n')
    recipe = recipes["python-lzo"]
    assert recipe.system_packages("apt-get") == ["a", "b"]
    assert recipe.system_packages("yum") == ["lzo-devel"]
    assert recipe.system_packages("dnf") == ["lzo-devel"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[recipes.x\n", "not TOML"),
        ('[recipes.x]\napt = ["libfoo; rm -rf /"]\n', "recipes.x.apt: .*not a package name"),
        ('[recipes.x]\nenv = { "BAD NAME" = "1" }\n', "not a variable name"),
        ('[recipes.x]\nenv = { PATH = "/evil" }\n', "PATH is set by the sandbox itself"),
        ('[recipes.x]\nenv = { ARMWHEELS_OUT = "/" }\n', "set by the sandbox itself"),
        ('[recipes.x]\nconstraints = ["setuptools @ https://evil/x.whl"]\n', "may not be a URL"),
        ('[recipes.x]\nconstraints = ["not a requirement!"]\n', "not a requirement"),
        ('[recipes.x]\nversions = "newest"\n', "not a version specifier"),
        ('[recipes.x]\nbuild_command = "  "\n', "build_command is empty"),
        ("[recipes.x]\nunknown = 1\n", "recipes.x.unknown: Extra inputs"),
        ("[recipes.x]\n[recipes.X]\n", "a second recipe for x"),
        ('[recipes."-bad-"]\n', "recipes.-bad-"),
        ("[other]\n", "other: Extra inputs"),
    ],
)
def test_bad_recipes_are_refused_with_one_line(text: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message) as caught:
        parse_recipes(text, "recipes.toml")
    assert "\n" not in str(caught.value).strip()


def test_a_changed_file_is_reread_and_a_broken_edit_keeps_the_last_good(tmp_path: Path) -> None:
    path = tmp_path / "recipes.toml"
    path.write_text('[recipes.lzo]\napt = ["liblzo2-dev"]\n')
    book = RecipeBook(path)
    assert book.recipe_for("LZO", "1.0") is not None
    path.write_text('[recipes.lzo]\napt = ["liblzo2-dev", "zlib1g-dev"]\n')
    os.utime(path, ns=(1, 10**18))
    recipe = book.recipe_for("lzo", "1.0")
    assert recipe is not None and recipe.apt == ["liblzo2-dev", "zlib1g-dev"]
    path.write_text("[recipes.lzo\n")  # a typo while editing
    os.utime(path, ns=(1, 2 * 10**18))
    recipe = book.recipe_for("lzo", "1.0")
    assert recipe is not None and recipe.apt == ["liblzo2-dev", "zlib1g-dev"]
    path.unlink()
    assert book.recipe_for("lzo", "1.0") is not None
    assert book.recipe_for("other", "1.0") is None


def test_a_bad_recipe_file_stops_the_master_config_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "recipes.toml"
    path.write_text('[recipes.x]\napt = ["$(reboot)"]\n')
    with pytest.raises(ConfigError, match="not a package name"):
        load_settings(None, master={"recipes": path})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(None, master={"recipes": tmp_path / "missing.toml"})


def test_recipe_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipe", "check", str(EXAMPLE)]) == 0
    assert "3 recipes: cffi, python-lzo, pyyaml" in capsys.readouterr().out
    assert main(["recipe", "check", str(EXAMPLE), "--project", "Python.LZO"]) == 0
    assert "liblzo2-dev" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[recipes.x]\nenv = { HOME = "/" }\n')
    assert main(["recipe", "check", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("armwheels: error: ") and "HOME is set by the sandbox" in err
    assert len(err.splitlines()) == 1
    assert main(["recipe", "check", str(tmp_path / "none.toml")]) == 2


def test_a_claim_carries_the_projects_recipe_to_the_builder(
    settings: Settings, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    path = tmp_path / "recipes.toml"
    path.write_text(
        '[recipes.demo]\napt = ["liblzo2-dev"]\nenv = { CFLAGS = "-O1" }\nversions = ">=1"\n'
    )
    settings = settings.model_copy(
        update={"master": settings.master.model_copy(update={"recipes": path})}
    )
    with transaction(factory) as session:
        _, _, [first] = add_release(session, settings, version="1.0")
        _, _, [old] = add_release(session, settings, version="0.9")
        token = create_token(session, "recipe-builder", TokenRole.BUILDER)
        first_id, old_id = first.id, old.id
    with TestClient(create_app(settings, factory)) as client:
        auth = {"Authorization": f"Bearer {token}"}
        registration = {"arch": "aarch64", "backend": "docker", "python_tags": ["cp311"]}
        assert client.post("/api/v1/builders/register", headers=auth, json=registration).is_success
        answer = client.post(f"/api/v1/jobs/{first_id}/claim", headers=auth)
        assert answer.status_code == 200, answer.text
        spec = JobSpec.from_json(answer.json())
        assert spec.recipe is not None
        assert spec.recipe.apt == ["liblzo2-dev"] and spec.recipe.env == {"CFLAGS": "-O1"}
        # The versions specifier leaves 0.9 without it.
        older = JobSpec.from_json(client.post(f"/api/v1/jobs/{old_id}/claim", headers=auth).json())
        assert older.recipe is None


def test_egress_is_off_unless_a_recipe_asks_for_it() -> None:
    recipes = parse_recipes('[recipes.needs-net]\negress = true\n[recipes.plain]\napt = ["a"]\n')
    assert recipes["needs-net"].egress is True
    assert recipes["plain"].egress is False
    with pytest.raises(RecipeError, match="egress"):
        parse_recipes('[recipes.x]\negress = "yes please"\n')

"""Per-project build recipes: what a project needs beyond `pip wheel`, kept in one TOML
file that operators edit without touching code or restarting anything.

    [recipes.python-lzo]
    apt = ["liblzo2-dev"]          # installed in the build image (Debian-based images)
    yum = ["lzo-devel"]            # the same for manylinux (CentOS-based) images
    env = { CFLAGS = "-O2" }
    constraints = ["setuptools<81"]
    build_command = "python -m pip wheel --no-deps -w \\"$ARMWHEELS_DIST\\" \\"$SDIST\\""
    versions = ">=1.15"            # optional: the releases this recipe applies to
    egress = false                 # true: may download while building, via the proxy

The master owns the file and sends the matching recipe with each claimed job, so every
builder of the farm builds a project the same way. Everything is validated: package
names and variable names are checked against their grammar, because they end up in a
shell inside the build sandbox.
"""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from common.names import BadName, normalize_project

log = logging.getLogger(__name__)

# Debian and RPM package names (Debian policy 5.6.1; RPM is laxer but this covers it).
_PACKAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._-]{0,127}$")
# The recipe field that holds the packages of each package manager an image may have.
RECIPE_FIELD_OF_MANAGER = {"apt-get": "apt", "yum": "yum", "dnf": "yum"}
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Variables the sandbox sets itself; a recipe may not redirect them.
RESERVED_VARIABLES = frozenset(
    {"HOME", "PATH", "TMPDIR", "SDIST", "PIP_CONSTRAINT", "PIP_FIND_LINKS", "PIP_CERT"}
)


class RecipeError(ValueError):
    """A recipe file that cannot be used, worded as one line."""


class Recipe(BaseModel):
    """How to build one project; sent to builders inside the job spec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    apt: list[str] = Field(default_factory=list, max_length=64)
    yum: list[str] = Field(default_factory=list, max_length=64)
    env: dict[str, str] = Field(default_factory=dict)
    constraints: list[str] = Field(default_factory=list, max_length=256)
    build_command: str | None = Field(default=None, max_length=4096)
    versions: str | None = None
    # The build may download at build time (the few sdists that must): it reaches the
    # outside through the builder's filtering proxy, never the builder host or the farm.
    egress: bool = False
    # Never cross-compile this project (a build that runs a compiled helper of its own):
    # the master tells builders so in the job spec; never sent as part of the recipe.
    emulate: bool = Field(default=False, exclude=True)

    @field_validator("apt", "yum")
    @classmethod
    def _packages(cls, value: list[str]) -> list[str]:
        return package_names(value)

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _VARIABLE.match(name):
                raise ValueError(f"not a variable name: {name!r}")
            if name in RESERVED_VARIABLES or name.startswith("ARMWHEELS_"):
                raise ValueError(f"{name} is set by the sandbox itself")
            if "\0" in text or len(text) > 4096:
                raise ValueError(f"value of {name} is too long or holds a NUL byte")
        return value

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, value: list[str]) -> list[str]:
        for line in value:
            try:
                requirement = Requirement(line)
            except InvalidRequirement as exc:
                raise ValueError(f"not a requirement: {line!r}") from exc
            if requirement.url:
                raise ValueError(f"a constraint may not be a URL: {line!r}")
        return value

    @field_validator("build_command")
    @classmethod
    def _command(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or "\0" in value):
            raise ValueError("build_command is empty or holds a NUL byte")
        return value

    @field_validator("versions")
    @classmethod
    def _versions(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                SpecifierSet(value)
            except InvalidSpecifier as exc:
                raise ValueError(f"not a version specifier: {value!r}") from exc
        return value

    def applies_to(self, version: str) -> bool:
        if self.versions is None:
            return True
        try:
            return SpecifierSet(self.versions).contains(Version(version), prereleases=True)
        except InvalidVersion:
            return False

    def system_packages(self, manager: str) -> list[str]:
        """The packages for an image's package manager (apt-get, or yum/dnf)."""
        return self.apt if manager == "apt-get" else self.yum

    def with_packages(self, learned: dict[str, list[str]]) -> Recipe:
        """This recipe with the packages the farm learned for the project added, by
        package manager ({"apt-get": [...], "yum": [...]}): what its next build starts
        with."""
        apt, yum = list(self.apt), list(self.yum)
        for manager, packages in learned.items():
            field = RECIPE_FIELD_OF_MANAGER.get(manager)
            if field == "apt":
                apt += packages
            elif field == "yum":
                yum += packages
        return self.model_copy(update={"apt": package_names(apt), "yum": package_names(yum)})


def package_names(value: list[str]) -> list[str]:
    """Distribution package names, sorted and unique; ValueError names one that is not a
    package name (they end up in a shell: only the grammar's characters pass)."""
    for name in value:
        if not isinstance(name, str) or not _PACKAGE.match(name):
            raise ValueError(f"not a package name: {name!r}")
    return sorted(set(value))


class _RecipeFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipes: dict[str, Recipe] = Field(default_factory=dict)


def parse_recipes(text: str, origin: str = "recipes") -> dict[str, Recipe]:
    """Recipes keyed by normalised project name; RecipeError names the first problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{origin}: not TOML: {exc}") from exc
    try:
        parsed = _RecipeFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise RecipeError(f"{origin}: {where}: {first['msg']}") from exc
    book: dict[str, Recipe] = {}
    for name, recipe in parsed.recipes.items():
        try:
            key = normalize_project(name)
        except BadName as exc:
            raise RecipeError(f"{origin}: recipes.{name}: {exc}") from exc
        if key in book:
            raise RecipeError(f"{origin}: recipes.{name}: a second recipe for {key}")
        book[key] = recipe
    return book


class RecipeBook:
    """The recipe file, re-read when it changes. A broken edit is logged and the last
    good recipes stay in force, so a typo never stops builds that were working."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._recipes: dict[str, Recipe] = {}
        if path is not None:
            self._recipes = parse_recipes(_read(path), str(path))
            self._stamp = _stamp(path)

    def recipe_for(self, project: str, version: str) -> Recipe | None:
        self._reload()
        recipe = self._recipes.get(normalize_project(project))
        if recipe is None or not recipe.applies_to(version):
            return None
        return recipe

    def _reload(self) -> None:
        if self.path is None:
            return
        try:
            stamp = _stamp(self.path)
        except OSError as exc:
            log.error("recipe file unreadable, keeping the last good one: %s", exc)
            return
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._recipes = parse_recipes(_read(self.path), str(self.path))
        except (RecipeError, OSError) as exc:
            log.error("recipe file not used, keeping the last good one: %s", exc)
            return
        log.info("recipes reloaded", extra={"recipes": len(self._recipes)})


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read: {exc}") from exc


def _stamp(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_mtime_ns, status.st_size

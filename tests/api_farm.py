"""A master's app in a TestClient with one builder registered: what tests of the builder
API (claims, results, what the master learns from them) start from."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings, load_settings
from common.db import transaction
from common.states import TokenRole
from master.auth import create_token
from master.web.app import create_app


@dataclass
class ApiFarm:
    client: TestClient
    auth: dict[str, str]
    factory: sessionmaker[Session]


@contextmanager
def api_farm(
    settings: Settings, factory: sessionmaker[Session], name: str, backend: str = "docker"
) -> Iterator[ApiFarm]:
    """The app on `settings`, with builder `name` (aarch64, cp311, `backend`) registered."""
    with transaction(factory) as session:
        token = create_token(session, name, TokenRole.BUILDER)
    with TestClient(create_app(settings, factory)) as client:
        auth = {"Authorization": f"Bearer {token}"}
        body = {"arch": "aarch64", "backend": backend, "python_tags": ["cp311"]}
        answer = client.post("/api/v1/builders/register", headers=auth, json=body)
        assert answer.is_success, answer.text
        yield ApiFarm(client, auth, factory)


def settings_with_recipes(database_url: str, tmp_path: Path, recipes: str) -> Settings:
    """Settings on the test's database and data directory, with this recipe file."""
    path = tmp_path / "recipes.toml"
    path.write_text(recipes)
    return load_settings(
        None,
        database={"url": database_url},
        master={"data_dir": tmp_path / "data", "recipes": path},
    )

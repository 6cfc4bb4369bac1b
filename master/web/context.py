"""What the routers of one master process share: its settings, database sessions, the
files it stores, the live logs builders stream, the recipes and the static index copy.
Made once by create_app and handed to each router."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.recipes import RecipeBook
from master.builds.live_logs import LiveLogs, live_caps
from master.index.static import StaticIndex
from master.storage import Storage


@dataclass(frozen=True)
class MasterContext:
    settings: Settings
    factory: sessionmaker[Session]
    storage: Storage
    live: LiveLogs
    recipes: RecipeBook
    static: StaticIndex | None

    @classmethod
    def create(cls, settings: Settings, factory: sessionmaker[Session]) -> MasterContext:
        storage = Storage(settings.master.data_dir)
        return cls(
            settings=settings,
            factory=factory,
            storage=storage,
            live=LiveLogs(storage, *live_caps(settings.master.max_log_bytes)),
            recipes=RecipeBook(settings.master.recipes),
            static=(
                StaticIndex(settings.master.data_dir, settings.distribution_indexes())
                if settings.index.static
                else None
            ),
        )

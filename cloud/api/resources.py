"""What the running API holds: one database, one model registry and one job dispatcher.

Built from the settings when the app starts (its lifespan), not when it is made, so making the
app (for its OpenAPI document, or in a test) touches no server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cloud.settings import CloudSettings
from cloud.storage.db import Database, migrate

if TYPE_CHECKING:
    from cloud.pipeline.dispatch import Dispatcher
    from cloud.registry.registry import ModelRegistry


class NotStartedError(RuntimeError):
    """A resource was asked for before the app started (or after it stopped)."""


@dataclass
class Resources:
    """The API's connections, opened by `open` at startup and closed by `close`."""

    settings: CloudSettings
    db: Database | None = None
    registry: ModelRegistry | None = None
    dispatcher: Dispatcher | None = None

    def open(self) -> None:
        """Migrate and open the database, then make the registry and the dispatcher."""
        from cloud.pipeline.dispatch import make_dispatcher
        from cloud.registry.registry import ModelRegistry

        settings = self.settings
        migrate(settings.db_url, settings.db_schema)
        self.db = Database(settings.db_url, settings.db_schema)
        self.registry = ModelRegistry(settings, self.db)
        self.dispatcher = make_dispatcher(settings)

    def close(self) -> None:
        """Close the database's connections; the resources cannot be used again."""
        if self.db is not None:
            self.db.dispose()
        self.db = self.registry = self.dispatcher = None

    def database(self) -> Database:
        """The open database."""
        if self.db is None:
            raise NotStartedError("the API has not started: no database")
        return self.db

    def model_registry(self) -> ModelRegistry:
        """The open model registry."""
        if self.registry is None:
            raise NotStartedError("the API has not started: no model registry")
        return self.registry

    def job_dispatcher(self) -> Dispatcher:
        """The dispatcher that enqueues jobs' steps."""
        if self.dispatcher is None:
            raise NotStartedError("the API has not started: no dispatcher")
        return self.dispatcher

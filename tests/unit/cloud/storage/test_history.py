"""The deployment history on a migrated SQLite cloud database: append, filter by version, order."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from cloud.storage import history
from cloud.storage.db import Database


def test_an_event_comes_back_as_recorded_with_an_aware_time(db: Database) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    with db.session() as session:
        recorded = history.record_event(
            session,
            actor="cli:ana",
            action=history.DEPLOY_REQUESTED,
            model_version="cnn-v2.0.0",
            fab_id="fab-1",
            nodes=["node-a", "node-b"],
            reason="canary on line 3",
        )
    with db.session() as session:
        (read,) = history.list_events(session)
    assert read == recorded
    assert (read.actor, read.action, read.model_version) == (
        "cli:ana",
        "deploy_requested",
        "cnn-v2.0.0",
    )
    assert (read.fab_id, read.nodes, read.reason) == (
        "fab-1",
        ("node-a", "node-b"),
        "canary on line 3",
    )
    assert read.alias is None and read.previous_version is None
    assert read.at.tzinfo is not None and before <= read.at <= datetime.now(UTC) + timedelta(
        seconds=1
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        read.actor = "someone else"  # type: ignore[misc]


def test_a_version_history_holds_its_events_and_the_moves_that_took_an_alias_from_it(
    db: Database,
) -> None:
    with db.session() as session:
        for version in ("v-a", "v-b"):
            history.record_event(
                session,
                actor="system",
                action=history.REGISTERED,
                model_version=version,
                reason="imported",
            )
        history.record_event(
            session,
            actor="cli:ana",
            action=history.ALIAS_SET,
            model_version="v-a",
            alias="champion",
            reason="first",
        )
        history.record_event(
            session,
            actor="cli:bo",
            action=history.ALIAS_SET,
            model_version="v-b",
            alias="champion",
            previous_version="v-a",
            reason="better",
        )
    with db.session() as session:
        of_a = history.list_events(session, model_version="v-a")
        of_b = history.list_events(session, model_version="v-b")
        everything = history.list_events(session)
        newest_two = history.list_events(session, limit=2)
    assert [(e.action, e.model_version, e.reason) for e in of_a] == [
        ("registered", "v-a", "imported"),
        ("alias_set", "v-a", "first"),
        ("alias_set", "v-b", "better"),  # v-a lost champion here
    ]
    assert [(e.action, e.previous_version) for e in of_b] == [
        ("registered", None),
        ("alias_set", "v-a"),
    ]
    assert [e.id for e in everything] == sorted(e.id for e in everything)
    assert len(everything) == 4
    assert newest_two == everything[-2:]


def test_has_event_tells_whether_a_version_was_registered(db: Database) -> None:
    with db.session() as session:
        history.record_event(
            session,
            actor="cli:ana",
            action=history.ALIAS_SET,
            model_version="v-a",
            alias="candidate",
            reason="r",
        )
        assert not history.has_event(session, model_version="v-a", action=history.REGISTERED)
        history.record_event(
            session, actor="cli:ana", action=history.REGISTERED, model_version="v-a", reason="r"
        )
        assert history.has_event(session, model_version="v-a", action=history.REGISTERED)
        assert not history.has_event(session, model_version="v-b", action=history.REGISTERED)


def test_an_unknown_action_is_refused_and_nothing_is_written(db: Database) -> None:
    with pytest.raises(ValueError, match="action 'deleted'"), db.session() as session:
        history.record_event(
            session, actor="cli:ana", action="deleted", model_version="v-a", reason="r"
        )
    with db.session() as session:
        assert history.list_events(session) == []

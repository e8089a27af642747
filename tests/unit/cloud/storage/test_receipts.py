"""Upload receipts on a migrated SQLite cloud database: the first answer per key, kept."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from cloud.storage import receipts
from cloud.storage.db import Database
from cloud.storage.receipts import Receipt


def test_a_receipt_is_found_by_fab_kind_and_key(db: Database) -> None:
    with db.session() as session:
        assert receipts.find_receipt(session, fab_id="fab-1", kind="labels", key="k1") is None
        receipts.add_receipt(
            session, fab_id="fab-1", kind="labels", key="k1", receipt=Receipt(7, 2)
        )
    with db.session() as session:
        found = receipts.find_receipt(session, fab_id="fab-1", kind="labels", key="k1")
        assert found == Receipt(accepted=7, rejected=2)
        # The key is scoped by fab and by kind.
        assert receipts.find_receipt(session, fab_id="fab-2", kind="labels", key="k1") is None
        assert receipts.find_receipt(session, fab_id="fab-1", kind="aggregates", key="k1") is None
        assert receipts.find_receipt(session, fab_id="fab-1", kind="labels", key="k2") is None


def test_the_same_key_in_another_fab_or_kind_is_another_receipt(db: Database) -> None:
    with db.session() as session:
        receipts.add_receipt(session, fab_id="fab-1", kind="labels", key="k", receipt=Receipt(1, 0))
        receipts.add_receipt(session, fab_id="fab-2", kind="labels", key="k", receipt=Receipt(2, 0))
        receipts.add_receipt(
            session, fab_id="fab-1", kind="aggregates", key="k", receipt=Receipt(3, 1)
        )
    with db.session() as session:
        assert receipts.find_receipt(session, fab_id="fab-2", kind="labels", key="k") == Receipt(
            2, 0
        )
        assert receipts.find_receipt(
            session, fab_id="fab-1", kind="aggregates", key="k"
        ) == Receipt(3, 1)


def test_a_key_used_again_fails_and_the_first_answer_stays(db: Database) -> None:
    with db.session() as session:
        receipts.add_receipt(session, fab_id="fab-1", kind="labels", key="k", receipt=Receipt(5, 0))
    with pytest.raises(IntegrityError), db.session() as session:
        receipts.add_receipt(session, fab_id="fab-1", kind="labels", key="k", receipt=Receipt(9, 9))
    with db.session() as session:
        assert receipts.find_receipt(session, fab_id="fab-1", kind="labels", key="k") == Receipt(
            5, 0
        )

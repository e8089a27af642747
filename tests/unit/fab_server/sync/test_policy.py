"""The data policy: keyed hashes, no raw identifier leaves, maps only where allowed, the key."""

from __future__ import annotations

import hashlib
import hmac
import stat
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from fab_server import domain
from fab_server.errors import InvalidArgument
from fab_server.settings import FabSettings, SyncSettings
from fab_server.sync import policy
from fab_server.sync.policy import DataPolicy, keyed_hash
from fab_server.sync.records import DailyFigures, LabelRecord

KEY = b"a-fab-secret-key-of-32-bytes-000"
MAP = domain.StoredMap(rows=2, cols=3, values=bytes([0, 1, 2, 0, 1, 2]))


def _label(**changes: object) -> LabelRecord:
    values: dict[str, object] = {
        "label_id": 7,
        "wafer_id": "WAFER-RAW-0042",
        "lot_id": "LOT-RAW-0099",
        "node_id": "edge-7",
        "sequence": 12,
        "outcome": domain.ReviewOutcome.RELABELLED,
        "true_label": 4,
        "predicted_class": 3,
        "model_version": "trm-v1.0.0",
        "confidence": 0.41,
        "reason": domain.ReviewReason.CANARY_SAMPLE,
        "resolved_by": "eng-alice",
        "resolved_at": datetime(2026, 3, 1, 12, 30, tzinfo=UTC),
        "wafer_map": MAP,
    }
    values.update(changes)
    return LabelRecord(**values)  # type: ignore[arg-type]


def _policy(maps: bool) -> DataPolicy:
    return DataPolicy(fab_id="fab-1", maps_leave_premises=maps, hash_key=KEY)


def test_keyed_hash_is_hmac_sha256_lowercase_hex() -> None:
    expected = hmac.new(KEY, b"WAFER-1", hashlib.sha256).hexdigest()
    assert keyed_hash(KEY, "WAFER-1") == expected
    assert keyed_hash(KEY, "WAFER-1") != keyed_hash(b"another-key-of-enough-bytes-0000", "WAFER-1")
    assert len(expected) == 64 and expected == expected.lower()


def test_a_label_leaves_without_raw_ids_or_map_by_default() -> None:
    message = policy.to_reviewed_label(_label(), _policy(maps=False))
    wire = message.SerializeToString()
    for raw in (b"WAFER-RAW-0042", b"LOT-RAW-0099", b"eng-alice", b"edge-7"):
        assert raw not in wire
    assert not message.HasField("wafer_map")
    assert message.wafer_key == keyed_hash(KEY, "WAFER-RAW-0042")
    assert message.lot_key == keyed_hash(KEY, "LOT-RAW-0099")
    assert message.reviewer_key == keyed_hash(KEY, "eng-alice")
    assert (message.true_label, message.predicted_label) == (4, 3)
    assert message.model_version == "trm-v1.0.0"
    assert message.confidence == pytest.approx(0.41)
    assert message.review_reason == domain.ReviewReason.CANARY_SAMPLE
    assert message.reviewed_at.ToDatetime(tzinfo=UTC) == datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


def test_the_map_leaves_only_when_the_policy_allows_it() -> None:
    allowed = policy.to_reviewed_label(_label(), _policy(maps=True))
    assert allowed.HasField("wafer_map")
    assert (allowed.wafer_map.rows, allowed.wafer_map.cols) == (2, 3)
    assert allowed.wafer_map.values == MAP.values
    assert b"WAFER-RAW-0042" not in allowed.SerializeToString()
    without_map = policy.to_reviewed_label(_label(wafer_map=None), _policy(maps=True))
    assert not without_map.HasField("wafer_map")


def test_a_label_without_a_prediction_has_no_model_version() -> None:
    message = policy.to_reviewed_label(
        _label(predicted_class=None, confidence=None), _policy(maps=False)
    )
    assert (message.model_version, message.confidence, message.predicted_label) == ("", 0.0, 0)


def test_batch_keys_depend_on_the_label_ids_and_policy_only() -> None:
    strict, open_ = _policy(maps=False), _policy(maps=True)
    first = policy.labels_request([_label(label_id=3), _label(label_id=9)], strict)
    again = policy.labels_request([_label(label_id=9), _label(label_id=3)], strict)
    assert first.idempotency_key == again.idempotency_key
    assert (
        first.idempotency_key != policy.labels_request([_label(label_id=3)], strict).idempotency_key
    )
    assert (
        first.idempotency_key
        != policy.labels_request([_label(label_id=3), _label(label_id=9)], open_).idempotency_key
    )
    assert first.fab_id == "fab-1" and len(first.labels) == 2


def test_aggregates_carry_the_figures_and_a_content_key() -> None:
    figures = DailyFigures(
        node_id="edge-1",
        day=date(2026, 3, 1),
        model_version="trm-v1.0.0",
        class_counts=(5, 0, 0, 3, 0, 0, 0, 0, 2),
        wafers_classified=10,
        flagged_count=4,
        reviewed_count=2,
        reviewed_correct_count=1,
        latency_p50_ms=10.0,
        latency_p90_ms=20.0,
        latency_p99_ms=30.0,
        avg_recursion_steps=2.5,
    )
    request = policy.aggregates_request([figures], _policy(maps=False))
    (aggregate,) = request.aggregates
    assert (aggregate.node_id, aggregate.date, aggregate.model_version) == (
        "edge-1",
        "2026-03-01",
        "trm-v1.0.0",
    )
    assert list(aggregate.class_counts) == [5, 0, 0, 3, 0, 0, 0, 0, 2]
    assert aggregate.reviewed_accuracy == pytest.approx(0.5)
    assert (
        request.idempotency_key
        == policy.aggregates_request([figures], _policy(False)).idempotency_key
    )
    idle = policy.to_daily_aggregate(
        DailyFigures(**{**figures.__dict__, "reviewed_count": 0, "reviewed_correct_count": 0})
    )
    assert not idle.HasField("reviewed_accuracy")


def test_the_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    sync = SyncSettings(fab_id="fab-1", hash_key_file=tmp_path / "var" / "sync-hash.key")
    first = DataPolicy.from_settings(sync)
    assert len(first.hash_key) == 32
    assert stat.S_IMODE(sync.hash_key_file.stat().st_mode) == 0o600
    assert DataPolicy.from_settings(sync).hash_key == first.hash_key
    assert "hash_key" not in repr(first)


def test_a_set_key_wins_and_short_keys_are_refused(tmp_path: Path) -> None:
    sync = SyncSettings(fab_id="fab-1", hash_key=SecretStr("s" * 20), hash_key_file=tmp_path / "k")
    assert DataPolicy.from_settings(sync).hash_key == b"s" * 20
    assert not (tmp_path / "k").exists()
    with pytest.raises(InvalidArgument, match=r"sync\.hash_key"):
        DataPolicy.from_settings(sync.model_copy(update={"hash_key": SecretStr("short")}))
    (tmp_path / "short.key").write_bytes(b"123")
    with pytest.raises(InvalidArgument, match=r"sync\.hash_key_file"):
        DataPolicy.from_settings(SyncSettings(fab_id="fab-1", hash_key_file=tmp_path / "short.key"))
    with pytest.raises(InvalidArgument, match=r"sync\.fab_id"):
        DataPolicy.from_settings(SyncSettings())


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"FAB_SYNC__ENABLED": "true"}, "sync.fab_id"),
        ({"FAB_SYNC__ENABLED": "true", "FAB_SYNC__FAB_ID": "fab-1"}, "sync.token"),
        ({"FAB_SYNC__TLS_CERT": "c.pem"}, "sync.tls_cert"),
        ({"FAB_SYNC__TLS_CERT": "c.pem", "FAB_SYNC__TLS_KEY": "k.pem"}, "sync.tls_ca"),
        ({"FAB_SYNC__BATCH_SIZE": "0"}, "sync.batch_size"),
        ({"FAB_SYNC__INTERVAL_S": "0"}, "sync.interval_s"),
        ({"FAB_CANARY_SAMPLE_RATE": "1.5"}, "canary_sample_rate"),
    ],
)
def test_settings_errors_name_the_field(
    env: dict[str, str], field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        FabSettings()
    assert field in str(caught.value)


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAB_SYNC__FAB_ID", "fab-9")
    monkeypatch.setenv("FAB_SYNC__TOKEN", "t" * 32)
    settings = FabSettings()
    sync = settings.sync
    assert (sync.enabled, sync.fab_id, sync.maps_leave_premises) == (False, "fab-9", False)
    assert (sync.cloud_grpc_target, sync.cloud_api_url) == (
        "127.0.0.1:50061",
        "http://127.0.0.1:8300",
    )
    assert (sync.interval_s, sync.batch_size, sync.overlap_s, sync.timeout_s) == (300, 500, 120, 30)
    assert sync.hash_key_file == Path("var/fab/sync-hash.key")
    assert settings.canary_sample_rate == 0.05
    assert "t" * 32 not in repr(settings)

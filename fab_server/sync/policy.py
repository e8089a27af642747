"""The fab's data policy: the ONE place that builds what the fab sends to the cloud.

Every outbound message of the sync (labels, aggregates, the deployments request) is built
here and nowhere else, so one module decides what leaves the premises:

- wafer, lot and reviewer identifiers leave only as ``keyed_hash`` (HMAC-SHA256, lowercase hex)
  under a key that never leaves the fab (``sync.hash_key``, or the key file created on first
  use);
- a wafer map leaves only when ``sync.maps_leave_premises`` is true;
- node ids, model versions, classes, confidences and times leave as they are (the cloud needs
  them and they identify no product).
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import os
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp  # type: ignore[import-untyped]

from fab_server.errors import InvalidArgument
from fab_server.settings import SyncSettings
from fab_server.sync.records import DailyFigures, LabelRecord
from waferplatform.v1 import cloud_pb2, common_pb2  # type: ignore[import-not-found]

logger = logging.getLogger(__name__)

KEY_BYTES = 32
"""Length of a generated hash key."""
MIN_KEY_BYTES = 16
"""Shortest hash key accepted (from the setting or the file)."""


@dataclass(frozen=True)
class DataPolicy:
    """What may leave this fab, and the key that anonymises identifiers.

    Attributes:
        fab_id: this fab's id (sent: the cloud checks it against the token).
        maps_leave_premises: whether wafer maps may be uploaded with their labels.
        hash_key: the HMAC key (never sent, never printed).
    """

    fab_id: str
    maps_leave_premises: bool
    hash_key: bytes = field(repr=False)

    @classmethod
    def from_settings(cls, sync: SyncSettings) -> DataPolicy:
        """The policy of ``sync``; creates the key file on first use when no key is set.

        Raises:
            InvalidArgument: no fab id, or an unusable key (the message names the setting).
        """
        if not sync.fab_id:
            raise InvalidArgument("sync.fab_id", "must be set to sync with the cloud")
        return cls(
            fab_id=sync.fab_id,
            maps_leave_premises=sync.maps_leave_premises,
            hash_key=load_hash_key(sync),
        )

    def key(self, value: str) -> str:
        """The anonymised form of an identifier."""
        return keyed_hash(self.hash_key, value)


def keyed_hash(key: bytes, value: str) -> str:
    """HMAC-SHA256 of ``value`` (UTF-8) under ``key``, as lowercase hex."""
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


def load_hash_key(sync: SyncSettings) -> bytes:
    """The identifiers' HMAC key: ``sync.hash_key``, else the key file (created when missing).

    A new key file gets 32 random bytes and mode 0600, created exclusively so two processes
    starting at once end up with the same key.

    Raises:
        InvalidArgument: a key shorter than 16 bytes, or a key file that cannot be read or made.
    """
    if sync.hash_key is not None:
        key = sync.hash_key.get_secret_value().encode("utf-8")
        if len(key) < MIN_KEY_BYTES:
            raise InvalidArgument(
                "sync.hash_key", f"has {len(key)} bytes; use at least {MIN_KEY_BYTES}"
            )
        return key
    path = sync.hash_key_file
    try:
        _create_key_file(path)
        key = path.read_bytes()
    except OSError as exc:
        raise InvalidArgument("sync.hash_key_file", f"cannot use {path}: {exc.strerror}") from exc
    if len(key) < MIN_KEY_BYTES:
        raise InvalidArgument(
            "sync.hash_key_file", f"{path} has {len(key)} bytes; at least {MIN_KEY_BYTES}"
        )
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        logger.warning("%s (the sync hash key) is readable by others: chmod 600 it", path)
    return key


def _create_key_file(path: Path) -> None:
    """Write a new random key to ``path`` unless it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            return
        raise
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_bytes(KEY_BYTES))
        handle.flush()
        os.fsync(handle.fileno())
    logger.warning("created the sync hash key %s: back it up; it never leaves the fab", path)


def _timestamp(value: datetime) -> Any:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def to_reviewed_label(label: LabelRecord, policy: DataPolicy) -> Any:
    """The cloud's ReviewedLabel of a verdict: ids hashed, the map only where policy allows.

    A label whose prediction is unknown (the result never arrived) is sent with an empty
    ``model_version`` and no confidence, which is how the cloud tells it apart.
    """
    message = cloud_pb2.ReviewedLabel(
        wafer_key=policy.key(label.wafer_id),
        lot_key=policy.key(label.lot_id),
        true_label=label.true_label,
        predicted_label=label.predicted_class or 0,
        model_version=label.model_version if label.predicted_class is not None else "",
        confidence=label.confidence or 0.0,
        reviewed_at=_timestamp(label.resolved_at),
        review_reason=int(label.reason),
        reviewer_key=policy.key(label.resolved_by),
    )
    if policy.maps_leave_premises and label.wafer_map is not None:
        message.wafer_map.CopyFrom(
            common_pb2.WaferMap(
                rows=label.wafer_map.rows,
                cols=label.wafer_map.cols,
                values=label.wafer_map.values,
                encoding=common_pb2.DIE_ENCODING_CANONICAL,
            )
        )
    return message


def labels_idempotency_key(label_ids: Sequence[int], policy: DataPolicy) -> str:
    """The key of a labels batch: the same labels under the same policy get the same key."""
    ids = ",".join(str(i) for i in sorted(label_ids))
    text = f"labels:v1:{policy.fab_id}:maps={int(policy.maps_leave_premises)}:{ids}"
    return hashlib.sha256(text.encode()).hexdigest()


def labels_request(labels: Sequence[LabelRecord], policy: DataPolicy) -> Any:
    """UploadLabelsRequest of one batch, with its deterministic idempotency key."""
    return cloud_pb2.UploadLabelsRequest(
        fab_id=policy.fab_id,
        idempotency_key=labels_idempotency_key([label.label_id for label in labels], policy),
        labels=[to_reviewed_label(label, policy) for label in labels],
    )


def to_daily_aggregate(figures: DailyFigures) -> Any:
    """The cloud's DailyAggregate of one node's day (node ids are not secret)."""
    message = cloud_pb2.DailyAggregate(
        node_id=figures.node_id,
        date=figures.day.isoformat(),
        model_version=figures.model_version,
        class_counts=list(figures.class_counts),
        wafers_classified=figures.wafers_classified,
        flagged_count=figures.flagged_count,
        reviewed_count=figures.reviewed_count,
        reviewed_correct_count=figures.reviewed_correct_count,
        latency_p50_ms=figures.latency_p50_ms,
        latency_p90_ms=figures.latency_p90_ms,
        latency_p99_ms=figures.latency_p99_ms,
        avg_recursion_steps=figures.avg_recursion_steps,
        novelty_quantiles=list(figures.novelty_quantiles),
        novelty_scored=figures.novelty_scored,
    )
    if figures.reviewed_count:
        message.reviewed_accuracy = figures.reviewed_correct_count / figures.reviewed_count
    return message


def aggregates_request(figures: Sequence[DailyFigures], policy: DataPolicy) -> Any:
    """UploadAggregatesRequest of one batch; its key is the SHA-256 of its content."""
    request = cloud_pb2.UploadAggregatesRequest(
        fab_id=policy.fab_id, aggregates=[to_daily_aggregate(f) for f in figures]
    )
    content = request.SerializeToString(deterministic=True)
    request.idempotency_key = hashlib.sha256(b"aggregates:v1:" + content).hexdigest()
    return request


def deployments_request(policy: DataPolicy) -> Any:
    """GetDeploymentsRequest of this fab."""
    return cloud_pb2.GetDeploymentsRequest(fab_id=policy.fab_id)

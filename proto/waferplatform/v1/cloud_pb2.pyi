import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from waferplatform.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReviewedLabel(_message.Message):
    __slots__ = ("wafer_key", "lot_key", "true_label", "predicted_label", "model_version", "confidence", "reviewed_at", "wafer_map", "review_reason", "reviewer_key")
    WAFER_KEY_FIELD_NUMBER: _ClassVar[int]
    LOT_KEY_FIELD_NUMBER: _ClassVar[int]
    TRUE_LABEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_LABEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    REVIEWED_AT_FIELD_NUMBER: _ClassVar[int]
    WAFER_MAP_FIELD_NUMBER: _ClassVar[int]
    REVIEW_REASON_FIELD_NUMBER: _ClassVar[int]
    REVIEWER_KEY_FIELD_NUMBER: _ClassVar[int]
    wafer_key: str
    lot_key: str
    true_label: _common_pb2.DefectClass
    predicted_label: _common_pb2.DefectClass
    model_version: str
    confidence: float
    reviewed_at: _timestamp_pb2.Timestamp
    wafer_map: _common_pb2.WaferMap
    review_reason: _common_pb2.ReviewReason
    reviewer_key: str
    def __init__(self, wafer_key: _Optional[str] = ..., lot_key: _Optional[str] = ..., true_label: _Optional[_Union[_common_pb2.DefectClass, str]] = ..., predicted_label: _Optional[_Union[_common_pb2.DefectClass, str]] = ..., model_version: _Optional[str] = ..., confidence: _Optional[float] = ..., reviewed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., wafer_map: _Optional[_Union[_common_pb2.WaferMap, _Mapping]] = ..., review_reason: _Optional[_Union[_common_pb2.ReviewReason, str]] = ..., reviewer_key: _Optional[str] = ...) -> None: ...

class UploadLabelsRequest(_message.Message):
    __slots__ = ("fab_id", "idempotency_key", "labels")
    FAB_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    fab_id: str
    idempotency_key: str
    labels: _containers.RepeatedCompositeFieldContainer[ReviewedLabel]
    def __init__(self, fab_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., labels: _Optional[_Iterable[_Union[ReviewedLabel, _Mapping]]] = ...) -> None: ...

class DailyAggregate(_message.Message):
    __slots__ = ("node_id", "date", "model_version", "class_counts", "wafers_classified", "flagged_count", "reviewed_count", "reviewed_correct_count", "reviewed_accuracy", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "avg_recursion_steps", "novelty_quantiles", "novelty_scored")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLASS_COUNTS_FIELD_NUMBER: _ClassVar[int]
    WAFERS_CLASSIFIED_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_COUNT_FIELD_NUMBER: _ClassVar[int]
    REVIEWED_COUNT_FIELD_NUMBER: _ClassVar[int]
    REVIEWED_CORRECT_COUNT_FIELD_NUMBER: _ClassVar[int]
    REVIEWED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P90_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    AVG_RECURSION_STEPS_FIELD_NUMBER: _ClassVar[int]
    NOVELTY_QUANTILES_FIELD_NUMBER: _ClassVar[int]
    NOVELTY_SCORED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    date: str
    model_version: str
    class_counts: _containers.RepeatedScalarFieldContainer[int]
    wafers_classified: int
    flagged_count: int
    reviewed_count: int
    reviewed_correct_count: int
    reviewed_accuracy: float
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    avg_recursion_steps: float
    novelty_quantiles: _containers.RepeatedScalarFieldContainer[float]
    novelty_scored: int
    def __init__(self, node_id: _Optional[str] = ..., date: _Optional[str] = ..., model_version: _Optional[str] = ..., class_counts: _Optional[_Iterable[int]] = ..., wafers_classified: _Optional[int] = ..., flagged_count: _Optional[int] = ..., reviewed_count: _Optional[int] = ..., reviewed_correct_count: _Optional[int] = ..., reviewed_accuracy: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p90_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., avg_recursion_steps: _Optional[float] = ..., novelty_quantiles: _Optional[_Iterable[float]] = ..., novelty_scored: _Optional[int] = ...) -> None: ...

class UploadAggregatesRequest(_message.Message):
    __slots__ = ("fab_id", "idempotency_key", "aggregates")
    FAB_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AGGREGATES_FIELD_NUMBER: _ClassVar[int]
    fab_id: str
    idempotency_key: str
    aggregates: _containers.RepeatedCompositeFieldContainer[DailyAggregate]
    def __init__(self, fab_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., aggregates: _Optional[_Iterable[_Union[DailyAggregate, _Mapping]]] = ...) -> None: ...

class UploadAck(_message.Message):
    __slots__ = ("idempotency_key", "accepted", "rejected")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    accepted: int
    rejected: int
    def __init__(self, idempotency_key: _Optional[str] = ..., accepted: _Optional[int] = ..., rejected: _Optional[int] = ...) -> None: ...

class GetDeploymentsRequest(_message.Message):
    __slots__ = ("fab_id",)
    FAB_ID_FIELD_NUMBER: _ClassVar[int]
    fab_id: str
    def __init__(self, fab_id: _Optional[str] = ...) -> None: ...

class NodeDeployment(_message.Message):
    __slots__ = ("node_id", "model_version", "stage", "rollout_id", "sha256", "size_bytes", "signature", "signing_key_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    model_version: str
    stage: _common_pb2.RolloutStage
    rollout_id: str
    sha256: str
    size_bytes: int
    signature: bytes
    signing_key_id: str
    def __init__(self, node_id: _Optional[str] = ..., model_version: _Optional[str] = ..., stage: _Optional[_Union[_common_pb2.RolloutStage, str]] = ..., rollout_id: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., signature: _Optional[bytes] = ..., signing_key_id: _Optional[str] = ...) -> None: ...

class GetDeploymentsResponse(_message.Message):
    __slots__ = ("fab_id", "deployments", "generated_at")
    FAB_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_AT_FIELD_NUMBER: _ClassVar[int]
    fab_id: str
    deployments: _containers.RepeatedCompositeFieldContainer[NodeDeployment]
    generated_at: _timestamp_pb2.Timestamp
    def __init__(self, fab_id: _Optional[str] = ..., deployments: _Optional[_Iterable[_Union[NodeDeployment, _Mapping]]] = ..., generated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

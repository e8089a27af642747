import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from waferplatform.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReviewState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REVIEW_STATE_UNSPECIFIED: _ClassVar[ReviewState]
    REVIEW_STATE_OPEN: _ClassVar[ReviewState]
    REVIEW_STATE_CLAIMED: _ClassVar[ReviewState]
    REVIEW_STATE_RESOLVED: _ClassVar[ReviewState]

class ModelAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_ACTION_KEEP: _ClassVar[ModelAction]
    MODEL_ACTION_INSTALL: _ClassVar[ModelAction]
    MODEL_ACTION_ROLLBACK: _ClassVar[ModelAction]
REVIEW_STATE_UNSPECIFIED: ReviewState
REVIEW_STATE_OPEN: ReviewState
REVIEW_STATE_CLAIMED: ReviewState
REVIEW_STATE_RESOLVED: ReviewState
MODEL_ACTION_KEEP: ModelAction
MODEL_ACTION_INSTALL: ModelAction
MODEL_ACTION_ROLLBACK: ModelAction

class ResultBatch(_message.Message):
    __slots__ = ("node_id", "batch_id", "results", "sent_at")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    batch_id: str
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.Classification]
    sent_at: _timestamp_pb2.Timestamp
    def __init__(self, node_id: _Optional[str] = ..., batch_id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[_common_pb2.Classification, _Mapping]]] = ..., sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StreamAck(_message.Message):
    __slots__ = ("node_id", "batch_id", "acked_sequence", "accepted", "duplicates", "rejected")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    batch_id: str
    acked_sequence: int
    accepted: int
    duplicates: int
    rejected: int
    def __init__(self, node_id: _Optional[str] = ..., batch_id: _Optional[str] = ..., acked_sequence: _Optional[int] = ..., accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., rejected: _Optional[int] = ...) -> None: ...

class WaferInput(_message.Message):
    __slots__ = ("wafer_id", "lot_id", "wafer_map")
    WAFER_ID_FIELD_NUMBER: _ClassVar[int]
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    WAFER_MAP_FIELD_NUMBER: _ClassVar[int]
    wafer_id: str
    lot_id: str
    wafer_map: _common_pb2.WaferMap
    def __init__(self, wafer_id: _Optional[str] = ..., lot_id: _Optional[str] = ..., wafer_map: _Optional[_Union[_common_pb2.WaferMap, _Mapping]] = ...) -> None: ...

class ClassifyBatchRequest(_message.Message):
    __slots__ = ("wafers",)
    WAFERS_FIELD_NUMBER: _ClassVar[int]
    wafers: _containers.RepeatedCompositeFieldContainer[WaferInput]
    def __init__(self, wafers: _Optional[_Iterable[_Union[WaferInput, _Mapping]]] = ...) -> None: ...

class ClassifyBatchResult(_message.Message):
    __slots__ = ("wafer_id", "classification", "error")
    WAFER_ID_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    wafer_id: str
    classification: _common_pb2.Classification
    error: str
    def __init__(self, wafer_id: _Optional[str] = ..., classification: _Optional[_Union[_common_pb2.Classification, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class ClassifyBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ClassifyBatchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ClassifyBatchResult, _Mapping]]] = ...) -> None: ...

class GetLotSummaryRequest(_message.Message):
    __slots__ = ("lot_id",)
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    lot_id: str
    def __init__(self, lot_id: _Optional[str] = ...) -> None: ...

class LotSummary(_message.Message):
    __slots__ = ("lot_id", "class_counts", "total_wafers", "die_yield", "flagged_count", "dominant_pattern", "excursion", "excursion_reason", "first_seen", "last_seen")
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_COUNTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_WAFERS_FIELD_NUMBER: _ClassVar[int]
    DIE_YIELD_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_COUNT_FIELD_NUMBER: _ClassVar[int]
    DOMINANT_PATTERN_FIELD_NUMBER: _ClassVar[int]
    EXCURSION_FIELD_NUMBER: _ClassVar[int]
    EXCURSION_REASON_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    lot_id: str
    class_counts: _containers.RepeatedScalarFieldContainer[int]
    total_wafers: int
    die_yield: float
    flagged_count: int
    dominant_pattern: _common_pb2.DefectClass
    excursion: bool
    excursion_reason: str
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    def __init__(self, lot_id: _Optional[str] = ..., class_counts: _Optional[_Iterable[int]] = ..., total_wafers: _Optional[int] = ..., die_yield: _Optional[float] = ..., flagged_count: _Optional[int] = ..., dominant_pattern: _Optional[_Union[_common_pb2.DefectClass, str]] = ..., excursion: _Optional[bool] = ..., excursion_reason: _Optional[str] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class FlagForReviewRequest(_message.Message):
    __slots__ = ("idempotency_key", "node_id", "sequence", "wafer_id", "reason", "comment", "requested_by")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    WAFER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    node_id: str
    sequence: int
    wafer_id: str
    reason: _common_pb2.ReviewReason
    comment: str
    requested_by: str
    def __init__(self, idempotency_key: _Optional[str] = ..., node_id: _Optional[str] = ..., sequence: _Optional[int] = ..., wafer_id: _Optional[str] = ..., reason: _Optional[_Union[_common_pb2.ReviewReason, str]] = ..., comment: _Optional[str] = ..., requested_by: _Optional[str] = ...) -> None: ...

class ReviewTicket(_message.Message):
    __slots__ = ("ticket_id", "idempotency_key", "node_id", "sequence", "wafer_id", "reason", "state", "created_at", "true_label")
    TICKET_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    WAFER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    TRUE_LABEL_FIELD_NUMBER: _ClassVar[int]
    ticket_id: str
    idempotency_key: str
    node_id: str
    sequence: int
    wafer_id: str
    reason: _common_pb2.ReviewReason
    state: ReviewState
    created_at: _timestamp_pb2.Timestamp
    true_label: _common_pb2.DefectClass
    def __init__(self, ticket_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., node_id: _Optional[str] = ..., sequence: _Optional[int] = ..., wafer_id: _Optional[str] = ..., reason: _Optional[_Union[_common_pb2.ReviewReason, str]] = ..., state: _Optional[_Union[ReviewState, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., true_label: _Optional[_Union[_common_pb2.DefectClass, str]] = ...) -> None: ...

class ConfidenceHistogram(_message.Message):
    __slots__ = ("bucket_edges", "counts")
    BUCKET_EDGES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    bucket_edges: _containers.RepeatedScalarFieldContainer[float]
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, bucket_edges: _Optional[_Iterable[float]] = ..., counts: _Optional[_Iterable[int]] = ...) -> None: ...

class EdgeMetrics(_message.Message):
    __slots__ = ("node_id", "window_start", "window_end", "wafers_classified", "throughput_per_minute", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "avg_recursion_steps", "confidence_histogram", "review_rate", "model_version", "outbox_depth", "class_counts", "gpu_temperature_c", "gpu_utilization")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    WAFERS_CLASSIFIED_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P90_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    AVG_RECURSION_STEPS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    REVIEW_RATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    CLASS_COUNTS_FIELD_NUMBER: _ClassVar[int]
    GPU_TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    GPU_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    window_start: _timestamp_pb2.Timestamp
    window_end: _timestamp_pb2.Timestamp
    wafers_classified: int
    throughput_per_minute: float
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    avg_recursion_steps: float
    confidence_histogram: ConfidenceHistogram
    review_rate: float
    model_version: str
    outbox_depth: int
    class_counts: _containers.RepeatedScalarFieldContainer[int]
    gpu_temperature_c: float
    gpu_utilization: float
    def __init__(self, node_id: _Optional[str] = ..., window_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., wafers_classified: _Optional[int] = ..., throughput_per_minute: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p90_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., avg_recursion_steps: _Optional[float] = ..., confidence_histogram: _Optional[_Union[ConfidenceHistogram, _Mapping]] = ..., review_rate: _Optional[float] = ..., model_version: _Optional[str] = ..., outbox_depth: _Optional[int] = ..., class_counts: _Optional[_Iterable[int]] = ..., gpu_temperature_c: _Optional[float] = ..., gpu_utilization: _Optional[float] = ...) -> None: ...

class PushMetricsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetModelAssignmentRequest(_message.Message):
    __slots__ = ("node_id", "installed_version", "previous_version", "artifact_format")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INSTALLED_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    installed_version: str
    previous_version: str
    artifact_format: str
    def __init__(self, node_id: _Optional[str] = ..., installed_version: _Optional[str] = ..., previous_version: _Optional[str] = ..., artifact_format: _Optional[str] = ...) -> None: ...

class ModelAssignment(_message.Message):
    __slots__ = ("node_id", "desired_version", "action", "sha256", "size_bytes", "signature", "rollout_id", "stage", "signing_key_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DESIRED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    desired_version: str
    action: ModelAction
    sha256: str
    size_bytes: int
    signature: bytes
    rollout_id: str
    stage: _common_pb2.RolloutStage
    signing_key_id: str
    def __init__(self, node_id: _Optional[str] = ..., desired_version: _Optional[str] = ..., action: _Optional[_Union[ModelAction, str]] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., signature: _Optional[bytes] = ..., rollout_id: _Optional[str] = ..., stage: _Optional[_Union[_common_pb2.RolloutStage, str]] = ..., signing_key_id: _Optional[str] = ...) -> None: ...

class DownloadModelRequest(_message.Message):
    __slots__ = ("node_id", "model_version", "artifact_format", "offset")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    model_version: str
    artifact_format: str
    offset: int
    def __init__(self, node_id: _Optional[str] = ..., model_version: _Optional[str] = ..., artifact_format: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("offset", "data", "total_size", "sha256", "signature")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    sha256: str
    signature: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ..., sha256: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DieEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIE_ENCODING_CANONICAL: _ClassVar[DieEncoding]
    DIE_ENCODING_WM811K: _ClassVar[DieEncoding]

class DefectClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEFECT_CLASS_NONE: _ClassVar[DefectClass]
    DEFECT_CLASS_CENTER: _ClassVar[DefectClass]
    DEFECT_CLASS_DONUT: _ClassVar[DefectClass]
    DEFECT_CLASS_EDGE_LOC: _ClassVar[DefectClass]
    DEFECT_CLASS_EDGE_RING: _ClassVar[DefectClass]
    DEFECT_CLASS_LOC: _ClassVar[DefectClass]
    DEFECT_CLASS_NEAR_FULL: _ClassVar[DefectClass]
    DEFECT_CLASS_RANDOM: _ClassVar[DefectClass]
    DEFECT_CLASS_SCRATCH: _ClassVar[DefectClass]

class ReviewReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REVIEW_REASON_UNSPECIFIED: _ClassVar[ReviewReason]
    REVIEW_REASON_LOW_CONFIDENCE: _ClassVar[ReviewReason]
    REVIEW_REASON_NOVELTY: _ClassVar[ReviewReason]
    REVIEW_REASON_MANUAL: _ClassVar[ReviewReason]
    REVIEW_REASON_CANARY_SAMPLE: _ClassVar[ReviewReason]

class RolloutStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_STAGE_UNSPECIFIED: _ClassVar[RolloutStage]
    ROLLOUT_STAGE_CANARY: _ClassVar[RolloutStage]
    ROLLOUT_STAGE_PRODUCTION: _ClassVar[RolloutStage]
DIE_ENCODING_CANONICAL: DieEncoding
DIE_ENCODING_WM811K: DieEncoding
DEFECT_CLASS_NONE: DefectClass
DEFECT_CLASS_CENTER: DefectClass
DEFECT_CLASS_DONUT: DefectClass
DEFECT_CLASS_EDGE_LOC: DefectClass
DEFECT_CLASS_EDGE_RING: DefectClass
DEFECT_CLASS_LOC: DefectClass
DEFECT_CLASS_NEAR_FULL: DefectClass
DEFECT_CLASS_RANDOM: DefectClass
DEFECT_CLASS_SCRATCH: DefectClass
REVIEW_REASON_UNSPECIFIED: ReviewReason
REVIEW_REASON_LOW_CONFIDENCE: ReviewReason
REVIEW_REASON_NOVELTY: ReviewReason
REVIEW_REASON_MANUAL: ReviewReason
REVIEW_REASON_CANARY_SAMPLE: ReviewReason
ROLLOUT_STAGE_UNSPECIFIED: RolloutStage
ROLLOUT_STAGE_CANARY: RolloutStage
ROLLOUT_STAGE_PRODUCTION: RolloutStage

class WaferMap(_message.Message):
    __slots__ = ("rows", "cols", "values", "encoding")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    rows: int
    cols: int
    values: bytes
    encoding: DieEncoding
    def __init__(self, rows: _Optional[int] = ..., cols: _Optional[int] = ..., values: _Optional[bytes] = ..., encoding: _Optional[_Union[DieEncoding, str]] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("wafer_id", "lot_id", "node_id", "sequence", "class_probabilities", "prediction", "confidence", "recursion_steps_used", "inference_latency_ms", "model_version", "flagged_for_review", "novelty_score", "classified_at", "wafer_map", "review_reason", "tested_at", "embedding")
    WAFER_ID_FIELD_NUMBER: _ClassVar[int]
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CLASS_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    RECURSION_STEPS_USED_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FOR_REVIEW_FIELD_NUMBER: _ClassVar[int]
    NOVELTY_SCORE_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIED_AT_FIELD_NUMBER: _ClassVar[int]
    WAFER_MAP_FIELD_NUMBER: _ClassVar[int]
    REVIEW_REASON_FIELD_NUMBER: _ClassVar[int]
    TESTED_AT_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    wafer_id: str
    lot_id: str
    node_id: str
    sequence: int
    class_probabilities: _containers.RepeatedScalarFieldContainer[float]
    prediction: DefectClass
    confidence: float
    recursion_steps_used: int
    inference_latency_ms: float
    model_version: str
    flagged_for_review: bool
    novelty_score: float
    classified_at: _timestamp_pb2.Timestamp
    wafer_map: WaferMap
    review_reason: ReviewReason
    tested_at: _timestamp_pb2.Timestamp
    embedding: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, wafer_id: _Optional[str] = ..., lot_id: _Optional[str] = ..., node_id: _Optional[str] = ..., sequence: _Optional[int] = ..., class_probabilities: _Optional[_Iterable[float]] = ..., prediction: _Optional[_Union[DefectClass, str]] = ..., confidence: _Optional[float] = ..., recursion_steps_used: _Optional[int] = ..., inference_latency_ms: _Optional[float] = ..., model_version: _Optional[str] = ..., flagged_for_review: _Optional[bool] = ..., novelty_score: _Optional[float] = ..., classified_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., wafer_map: _Optional[_Union[WaferMap, _Mapping]] = ..., review_reason: _Optional[_Union[ReviewReason, str]] = ..., tested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., embedding: _Optional[_Iterable[float]] = ...) -> None: ...

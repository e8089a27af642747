"""Request and response bodies of the edge HTTP API (pydantic; FastAPI builds OpenAPI from them).

``/classify`` has the product brief's fields exactly, plus ``novelty_score`` (null while the
node runs no novelty model) and an optional ``encoding`` of the map. The map itself is checked
by `wafercore.preprocessing` in the service, not by pydantic, so that one bad die gives one
error naming it (``wafer_map[3][7]``) instead of one error per bad die.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SkipValidation

from wafercore.validation import Identifier, ZonedTime

Encoding = Literal["canonical", "wm811k"]


class ClassifyRequest(BaseModel):
    """One wafer to classify."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "wafer_id": "WF-2024-0831-1042",
                    "lot_id": "LOT-A7732",
                    "wafer_map": [[2, 0, 2], [0, 1, 0], [2, 0, 2]],
                    "timestamp": "2025-08-31T10:42:15Z",
                }
            ]
        },
    )

    wafer_id: Identifier = Field(description="Wafer identifier from the test station.")
    lot_id: Identifier = Field(description="Lot the wafer belongs to.")
    wafer_map: SkipValidation[list[list[int]]] = Field(
        description="Rows of die values, any H x W up to 512 per side. Canonical encoding: "
        "0 pass, 1 fail, 2 out of wafer; WM-811K's (encoding=wm811k): 0 no die, 1 pass, 2 fail."
    )
    timestamp: ZonedTime = Field(
        description="When the station tested the wafer (ISO 8601 with a zone). The same "
        "wafer_id and timestamp again is a retry: it returns the stored answer and stores "
        "nothing; a retest carries a later timestamp."
    )
    encoding: Encoding = Field(default="canonical", description="How wafer_map's values read.")


class ClassifyResponse(BaseModel):
    """The classification of one wafer (stored in the node's outbox before it is sent)."""

    wafer_id: str
    prediction: str = Field(description="Predicted class name (Edge-Ring).")
    confidence: float = Field(description="Probability of the predicted class.")
    class_probabilities: dict[str, float] = Field(description="Class name -> probability.")
    recursion_steps_used: int = Field(description="Supervision steps run before halting.")
    inference_latency_ms: float = Field(description="Preprocessing and inference on the node.")
    model_version: str
    flagged_for_review: bool = Field(description="Confidence below the review threshold.")
    novelty_score: float | None = Field(
        default=None, description="Out-of-distribution score; null: no novelty model."
    )


class BatchRequest(BaseModel):
    """Several wafers in one call, all valid or none classified."""

    model_config = ConfigDict(extra="forbid")

    wafers: list[ClassifyRequest] = Field(min_length=1, description="1 to max_batch wafers.")


class BatchResponse(BaseModel):
    """One classification per wafer, in request order (G85: document order)."""

    results: list[ClassifyResponse]


class HealthResponse(BaseModel):
    """Whether the node takes work, and what it is doing."""

    status: Literal["ok", "outbox_full"]
    node_id: str
    model_version: str
    outbox_depth: int = Field(description="Results not yet acked by the fab.")
    outbox_bytes: int
    outbox_max_bytes: int
    uplink_connected: bool | None = Field(description="null: no fab configured.")


class ManifestSummary(BaseModel):
    """What the served model's manifest says."""

    kind: str
    n_sup: int
    halt_threshold: float
    temperature: float
    review_threshold: float = Field(description="The model's own; the node's is what flags.")
    onnx_sha256: str
    class_names: list[str]


class ModelResponse(BaseModel):
    """The served model and the one a rollback would return to."""

    version: str
    previous_version: str | None
    review_threshold: float = Field(description="Confidence below which results are flagged.")
    manifest: ManifestSummary

"""The edge node's HTTP API (FastAPI): classification, health, model and metrics.

Routes are thin: they turn bodies into `WaferInput` and `Classified` results into responses;
`ClassifyService` does the work. Local network only, so no authentication.

Errors: every error response is `wafercore.web.ErrorResponse` (``{"detail": [{"type", "loc",
"msg"}]}``). A bad request is 422 naming the field and the reason (pydantic's errors for the
body's shape, `InvalidInput` for ids, maps and G85 documents; the input is never echoed back), a
body over ``max_body_bytes`` is 413 (counted on the bytes received, so also without a
Content-Length), a request whose headers or body arrive too slowly is 408 (the connection is
closed, see `wafercore.web.deadline_protocol`), and a full outbox is 503 with Retry-After.
Nothing a client sends produces any other 5xx.

``/docs`` and ``/redoc`` are served from the node's own files (stations are on a closed network).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import FastAPI, Query, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BeforeValidator

from edge.classify import Classified, ClassifyService, WaferInput
from edge.metrics import EdgeMetrics
from edge.model_store import ModelStore
from edge.outbox import Outbox, OutboxFull
from edge.schemas import (
    BatchRequest,
    BatchResponse,
    ClassifyRequest,
    ClassifyResponse,
    HealthResponse,
    ManifestSummary,
    ModelResponse,
)
from edge.settings import EdgeSettings
from wafercore.classes import CLASS_NAMES
from wafercore.errors import InvalidInput
from wafercore.validation import valid_time
from wafercore.web import (
    BodyLimit,
    error_response,
    error_responses,
    install_error_handlers,
    mount_docs,
)

OUTBOX_RETRY_AFTER_S = 30
"""Retry-After of a 503 for a full outbox: room appears only as the fab acks results."""
MIN_ROOM_BYTES = 16 * 1024
"""``/healthz`` reports the outbox full below this much room (a few typical results)."""

_ERRORS = error_responses(
    (408, 413, 422, 503),
    {
        413: "The body is larger than max_body_bytes.",
        503: "The outbox is full (the fab has not acked results); retry later.",
    },
)
"""The errors of the classify routes (a body that can be slow, too large, invalid)."""
_COUNTED = frozenset({413, 422})
"""Refusals of FastAPI's and Starlette's own that the rejected-requests series counts."""


def _response(result: Classified) -> ClassifyResponse:
    return ClassifyResponse(
        wafer_id=result.wafer_id,
        prediction=CLASS_NAMES[result.prediction],
        confidence=result.confidence,
        class_probabilities=dict(zip(CLASS_NAMES, result.probabilities, strict=True)),
        recursion_steps_used=result.steps,
        inference_latency_ms=result.latency_ms,
        model_version=result.model_version,
        flagged_for_review=result.flagged,
        novelty_score=result.novelty_score,
    )


def _wafer(request: ClassifyRequest, prefix: str = "") -> WaferInput:
    return WaferInput(
        wafer_id=request.wafer_id,
        lot_id=request.lot_id,
        wafer_map=request.wafer_map,
        wm811k=request.encoding == "wm811k",
        field=f"{prefix}wafer_map",
        tested_at=request.timestamp,
    )


def create_app(
    *,
    settings: EdgeSettings,
    service: ClassifyService,
    store: ModelStore,
    outbox: Outbox,
    metrics: EdgeMetrics,
    uplink_connected: Callable[[], bool | None] = lambda: None,
) -> FastAPI:
    """The HTTP API of one node.

    Args:
        settings: node id, body limit and review threshold.
        service: classifies and stores results.
        store: the served model (``/model``).
        outbox: depth and size for ``/healthz``.
        metrics: served on ``/metrics``; rejected requests are counted.
        uplink_connected: whether the uplink reaches the fab; None without a fab.

    Returns:
        The ASGI app; the caller serves it.
    """
    app = FastAPI(
        title="Edge node",
        summary="Classifies wafer maps at a test station and keeps every result until the fab "
        "has it.",
        version="1",
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes)
    mount_docs(app)
    install_error_handlers(app, on_error=lambda code: _count(metrics, code))

    async def bad_map(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InvalidInput)
        metrics.rejected(422)
        return error_response(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            exc.reason,
            kind="wafer_map",
            loc=["body", exc.field],
        )

    async def outbox_full(_: Request, exc: Exception) -> JSONResponse:
        metrics.rejected(503)
        return error_response(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"results cannot be stored: {exc}",
            kind="outbox_full",
            headers={"Retry-After": str(OUTBOX_RETRY_AFTER_S)},
        )

    app.add_exception_handler(InvalidInput, bad_map)
    app.add_exception_handler(OutboxFull, outbox_full)

    @app.post("/classify", response_model=ClassifyResponse, responses=_ERRORS, tags=["classify"])
    async def classify(request: ClassifyRequest) -> ClassifyResponse:
        """Classify one wafer map; the result is stored for the fab before this returns."""
        (result,) = await service.classify([_wafer(request)])
        return _response(result)

    @app.post("/classify/batch", response_model=BatchResponse, responses=_ERRORS, tags=["classify"])
    async def classify_batch(request: BatchRequest) -> BatchResponse:
        """Classify up to max_batch wafers, all valid or none classified; one result each."""
        wafers = [_wafer(w, f"wafers[{i}].") for i, w in enumerate(request.wafers)]
        results = await service.classify(wafers)
        return BatchResponse(results=[_response(r) for r in results])

    @app.post(
        "/classify/g85",
        response_model=BatchResponse,
        responses=_ERRORS,
        tags=["classify"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/xml": {"schema": {"type": "string"}}},
            }
        },
    )
    async def classify_g85(
        request: Request,
        timestamp: Annotated[
            datetime | None,
            Query(
                description="When the station tested the wafers (ISO 8601 with a zone). With "
                "it, posting the same document again is a retry: the stored answers come back "
                "and nothing new is stored."
            ),
            BeforeValidator(valid_time),
        ] = None,
    ) -> BatchResponse:
        """Classify every map of a SEMI G85 XML document (ids from WaferId and LotId)."""
        results = await service.classify_g85(await request.body(), tested_at=timestamp)
        return BatchResponse(results=[_response(r) for r in results])

    @app.get(
        "/healthz",
        response_model=HealthResponse,
        responses={503: {"model": HealthResponse, "description": "The outbox is full."}},
        tags=["operations"],
    )
    async def healthz() -> JSONResponse:
        """200 while the node takes work; 503 while its outbox is full."""
        size = outbox.size_bytes()
        full = outbox.max_bytes - size < MIN_ROOM_BYTES
        body = HealthResponse(
            status="outbox_full" if full else "ok",
            node_id=settings.node_id,
            model_version=store.current.version,
            outbox_depth=outbox.depth(),
            outbox_bytes=size,
            outbox_max_bytes=outbox.max_bytes,
            uplink_connected=uplink_connected(),
        )
        code = status.HTTP_503_SERVICE_UNAVAILABLE if full else status.HTTP_200_OK
        return JSONResponse(body.model_dump(), code)

    @app.get("/model", response_model=ModelResponse, tags=["operations"])
    async def model() -> ModelResponse:
        """The served model, its manifest, and the version a rollback would return to."""
        current = store.current
        manifest = current.runtime.manifest
        return ModelResponse(
            version=current.version,
            previous_version=store.previous_version,
            review_threshold=settings.review_threshold,
            manifest=ManifestSummary(
                kind=manifest.kind,
                n_sup=manifest.n_sup,
                halt_threshold=manifest.halt_threshold,
                temperature=manifest.temperature,
                review_threshold=manifest.review_threshold,
                onnx_sha256=manifest.onnx_sha256,
                class_names=list(manifest.class_names),
            ),
        )

    @app.get("/metrics", response_class=Response, tags=["operations"])
    async def prometheus() -> Response:
        """Prometheus text exposition of this node's series."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def _count(metrics: EdgeMetrics, code: int) -> None:
    if code in _COUNTED:
        metrics.rejected(code)

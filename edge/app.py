"""The edge node's HTTP API (FastAPI): classification, health, model and metrics.

Routes are thin: they turn bodies into `WaferInput` and `Classified` results into responses;
`ClassifyService` does the work. Local network only, so no authentication.

Errors: a bad request is 422 naming the field and the reason (pydantic's errors for the body's
shape, `InvalidInput` for ids, maps and G85 documents; the input is never echoed back), a body
over ``max_body_bytes`` is 413 (counted on the bytes received, so also without a
Content-Length), and a full outbox is 503 with Retry-After. Nothing a client sends produces a
5xx.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, Response, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from edge.classify import Classified, ClassifyService, WaferInput
from edge.metrics import EdgeMetrics
from edge.model_store import ModelStore
from edge.outbox import Outbox, OutboxFull
from edge.schemas import (
    BatchRequest,
    BatchResponse,
    ClassifyRequest,
    ClassifyResponse,
    ErrorResponse,
    HealthResponse,
    ManifestSummary,
    ModelResponse,
    error_body,
)
from edge.settings import EdgeSettings
from wafercore.classes import CLASS_NAMES
from wafercore.errors import InvalidInput

OUTBOX_RETRY_AFTER_S = 30
"""Retry-After of a 503 for a full outbox: room appears only as the fab acks results."""
MAX_REPORTED_ERRORS = 20
"""A 422 lists at most this many problems (a body can hold thousands)."""
MIN_ROOM_BYTES = 16 * 1024
"""``/healthz`` reports the outbox full below this much room (a few typical results)."""

_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"description": "The body is larger than max_body_bytes."},
    422: {"model": ErrorResponse, "description": "A field is invalid; the body names it."},
    503: {"description": "The outbox is full (the fab has not acked results); retry later."},
}


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
        max_body_size=settings.max_body_bytes,
    )

    async def validation_failed(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        metrics.rejected(422)
        # Without "input": a bad 1 MB map must not come back in the response.
        detail = [
            {"type": e["type"], "loc": list(e["loc"]), "msg": e["msg"]}
            for e in exc.errors()[:MAX_REPORTED_ERRORS]
        ]
        return JSONResponse({"detail": detail}, status.HTTP_422_UNPROCESSABLE_CONTENT)

    async def bad_map(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InvalidInput)
        metrics.rejected(422)
        return JSONResponse(
            error_body(exc.field, exc.reason, "wafer_map"), status.HTTP_422_UNPROCESSABLE_CONTENT
        )

    async def outbox_full(_: Request, exc: Exception) -> JSONResponse:
        metrics.rejected(503)
        return JSONResponse(
            {"detail": f"results cannot be stored: {exc}"},
            status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(OUTBOX_RETRY_AFTER_S)},
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == status.HTTP_400_BAD_REQUEST:
            # FastAPI's answer to a body its JSON parser gave up on (nested too deep).
            metrics.rejected(422)
            return JSONResponse(
                error_body("body", "cannot be parsed as JSON", "json_invalid"),
                status.HTTP_422_UNPROCESSABLE_CONTENT,
            )
        if exc.status_code == status.HTTP_413_CONTENT_TOO_LARGE:
            metrics.rejected(413)
            exc = StarletteHTTPException(
                413, f"the body is larger than {settings.max_body_bytes:,} bytes"
            )
        return await http_exception_handler(request, exc)

    app.add_exception_handler(RequestValidationError, validation_failed)
    app.add_exception_handler(InvalidInput, bad_map)
    app.add_exception_handler(OutboxFull, outbox_full)
    app.add_exception_handler(StarletteHTTPException, http_error)

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
    async def classify_g85(request: Request) -> BatchResponse:
        """Classify every map of a SEMI G85 XML document (ids from WaferId and LotId)."""
        results = await service.classify_g85(await request.body())
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
            path=str(current.path),
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

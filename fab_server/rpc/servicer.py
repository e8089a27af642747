"""FabService over grpc.aio: a thin layer from protobuf to the services and back.

Every handler first asks `fab_server.rpc.auth` who is calling and whether they may. Errors
become status codes here, in `FabServicer._handling`: Unauthenticated -> UNAUTHENTICATED,
PermissionDenied -> PERMISSION_DENIED, InvalidArgument (and wafercore's InvalidInput) ->
INVALID_ARGUMENT, NotFound -> NOT_FOUND, Conflict -> FAILED_PRECONDITION, with the field and
reason as details; anything else is logged and answered INTERNAL, never with a traceback on
the wire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc  # type: ignore[import-untyped]
from prometheus_client import Histogram
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server.errors import Conflict, FabError, NotFound
from fab_server.rpc import auth, convert
from fab_server.rpc.auth import Authenticator, PermissionDenied, Unauthenticated
from fab_server.services import classify, distribution, ingest, lots, metrics, review
from fab_server.settings import FabSettings
from wafercore.errors import InvalidInput
from waferplatform.v1 import fab_pb2  # type: ignore[import-not-found]

logger = logging.getLogger(__name__)

RPC_SECONDS = Histogram(
    "fab_grpc_handling_seconds",
    "Time to handle a FabService call (StreamResults: one batch, from receipt to ack).",
    ["method", "code"],
)

_STATUS = (
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),  # InvalidArgument is one too
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Conflict, grpc.StatusCode.FAILED_PRECONDITION),
)
_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def _status_of(error: FabError | InvalidInput) -> Any:
    for kind, code in _STATUS:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


class FabServicer:
    """Implements FabService (register with ``fab_pb2_grpc.add_FabServiceServicer_to_server``)."""

    def __init__(
        self,
        settings: FabSettings,
        sessions: async_sessionmaker[AsyncSession],
        classifier: classify.Classifier,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._classifier = classifier
        self._auth = Authenticator(settings, sessions)

    @asynccontextmanager
    async def _handling(
        self, method: str, context: Any, *, timed: bool = True
    ) -> AsyncIterator[None]:
        """Times the body and turns its errors into a gRPC status.

        Args:
            method: the RPC, for the histogram and the log.
            context: the call's context.
            timed: False for a stream's opening check, recorded only when it fails (the
                histogram times one batch per StreamResults observation).
        """
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            yield
        except (FabError, InvalidInput) as exc:
            code = _status_of(exc)
            if code in _REFUSED:
                logger.warning("%s refused for %s: %s", method, context.peer(), exc)
            await context.abort(code, str(exc))
        except (grpc.aio.AbortError, asyncio.CancelledError):
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            logger.exception("%s failed", method)
            await context.abort(code, f"{method} failed on the fab server; see its log")
        finally:
            if timed or code != grpc.StatusCode.OK:
                RPC_SECONDS.labels(method, code.name).observe(time.perf_counter() - started)

    async def StreamResults(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        """Stores each batch and answers it with an ack once committed.

        The caller is authenticated when the stream opens, and its credential checked again
        before each batch, so revoking a node cuts a stream it holds open for hours.
        """
        async with self._handling("StreamResults", context, timed=False):
            caller = auth.require_node_kind(await self._auth.authenticate(context))
        async for batch in request_iterator:
            async with self._handling("StreamResults", context):
                await self._auth.still_valid(caller)
                auth.require_node(caller, batch.node_id)
                results = convert.batch_from_proto(batch)
                # Shielded: a client that goes away must not cut a transaction in half; the
                # batch commits (and is acked on redelivery as duplicates) or rolls back whole.
                outcome = await asyncio.shield(
                    ingest.ingest_batch(
                        self._sessions,
                        node_id=batch.node_id,
                        results=results,
                        settings=self._settings,
                    )
                )
            yield convert.ack_to_proto(outcome, batch_id=batch.batch_id)

    async def ClassifyBatch(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Classifies up to 1,024 wafers; a bad map gives that wafer an ``error``."""
        async with self._handling("ClassifyBatch", context):
            await self._auth.authenticate(context)  # people and nodes alike
            outcomes = await classify.classify_batch(
                self._classifier,
                wafers=convert.wafers_from_proto(request),
                settings=self._settings,
            )
            return convert.classify_response_to_proto(outcomes)

    async def GetLotSummary(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Class counts, yield and excursion state of a lot."""
        async with self._handling("GetLotSummary", context):
            await self._auth.person(context)
            summary = await lots.lot_summary(self._sessions, lot_id=request.lot_id)
            return convert.lot_summary_to_proto(summary)

    async def FlagForReview(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Puts a classification on the review queue (idempotent on the key)."""
        async with self._handling("FlagForReview", context):
            caller = await self._auth.person_or_node(context, request.node_id)
            item = await review.flag_for_review(
                self._sessions,
                # Who asked is who authenticated, whatever the message's requested_by says.
                request=convert.flag_request_from_proto(request, requested_by=caller.name),
                settings=self._settings,
            )
            return convert.ticket_to_proto(item)

    async def PushMetrics(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Stores a node's monitoring window."""
        async with self._handling("PushMetrics", context):
            await self._auth.node(context, request.node_id)
            await metrics.push_metrics(self._sessions, record=convert.metrics_from_proto(request))
            return fab_pb2.PushMetricsResponse()

    async def GetModelAssignment(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Tells a node which model to run."""
        async with self._handling("GetModelAssignment", context):
            await self._auth.node(context, request.node_id)
            action, artifact, assignment = await distribution.get_assignment(
                self._sessions,
                node_id=request.node_id,
                installed_version=request.installed_version,
                previous_version=request.previous_version,
                artifact_format=request.artifact_format,
            )
            return convert.assignment_to_proto(
                node_id=request.node_id,
                installed_version=request.installed_version,
                action=action,
                artifact=artifact,
                assignment=assignment,
            )

    async def DownloadModel(  # noqa: N802 (gRPC method name)
        self, request: Any, context: Any
    ) -> AsyncIterator[Any]:
        """Streams an artifact in chunks from the requested offset."""
        async with self._handling("DownloadModel", context):
            await self._auth.node(context, request.node_id)
            artifact = await distribution.find_artifact(
                self._sessions,
                version=request.model_version,
                artifact_format=request.artifact_format,
            )
            chunks = distribution.read_chunks(
                artifact, offset=request.offset, chunk_bytes=self._settings.download_chunk_bytes
            )
            first = True
            async for offset, data in chunks:
                yield convert.chunk_to_proto(artifact, offset=offset, data=data, first=first)
                first = False

"""CloudSync over gRPC: authenticate the fab, validate, hand over to `cloud.services.sync`.

Every call carries a fab token (``authorization: Bearer``, role ``fab``, `wafer-cloud tokens
add --role fab --user FAB`); a request may only speak for the token's own fab. Behind mutual
TLS the client certificate's common name must name the same fab. Errors become status codes:
a bad request INVALID_ARGUMENT naming the field, a missing or wrong credential UNAUTHENTICATED,
another fab's id PERMISSION_DENIED, a database that does not answer UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped]
from sqlalchemy.exc import OperationalError

from cloud.errors import NotFound
from cloud.registry.artifacts import ArtifactCache
from cloud.registry.registry import ModelRegistry
from cloud.services import sync, tokens
from cloud.settings import CloudSettings
from cloud.storage.db import Database
from cloud.sync import convert
from wafercore.errors import InvalidInput
from wafercore.grpc_auth import bearer_token
from waferplatform.v1 import cloud_pb2, cloud_pb2_grpc  # type: ignore[import-not-found]

logger = logging.getLogger(__name__)
T = TypeVar("T")


class _RefusedError(Exception):
    def __init__(self, code: Any, message: str) -> None:
        super().__init__(message)
        self.code = code


class CloudSyncServicer(cloud_pb2_grpc.CloudSyncServicer):  # type: ignore[misc]
    """The CloudSync service on the cloud database and registry."""

    def __init__(self, settings: CloudSettings, db: Database, registry: ModelRegistry) -> None:
        """Serve from ``db`` (migrated) and ``registry``."""
        self.settings = settings
        self.db = db
        self.registry = registry
        self.cache = ArtifactCache(settings.artifact_cache_dir)

    async def UploadLabels(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Store reviewed labels, once per idempotency key."""
        now = datetime.now(UTC)

        def one(message: Any, field: str, fab_id: str) -> Any:
            return convert.label_from_proto(message, field, fab_id=fab_id, now=now)

        return await self._upload(
            context, request, request.labels, "labels", one, sync.upload_labels
        )

    async def UploadAggregates(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Store daily aggregates, once per idempotency key (the same day replaces)."""

        def one(message: Any, field: str, fab_id: str) -> Any:
            return convert.aggregate_from_proto(message, field, fab_id=fab_id)

        return await self._upload(
            context, request, request.aggregates, "aggregates", one, sync.upload_aggregates
        )

    async def _upload(
        self,
        context: Any,
        request: Any,
        items: Sequence[Any],
        field: str,
        one: Callable[[Any, str, str], Any],
        store: Callable[..., sync.Receipt],
    ) -> Any:
        """Authenticate, check the envelope, convert each item (refusing the bad ones), store."""

        async def run() -> Any:
            fab_id = await self._fab(context)
            convert.check_upload(request.fab_id, request.idempotency_key, len(items), fab_id)
            valid, refused = convert.convert_all(items, lambda m, f: one(m, f, fab_id), field)
            _log_refused(fab_id, refused)
            receipt = await asyncio.to_thread(
                store,
                self.db,
                fab_id=fab_id,
                key=request.idempotency_key,
                valid=valid,
                rejected=len(refused),
                now=datetime.now(UTC),
            )
            return _ack(request.idempotency_key, receipt)

        return await self._handling(context, run)

    async def GetDeployments(self, request: Any, context: Any) -> Any:  # noqa: N802
        """The fab's deployment plan."""

        async def run() -> Any:
            fab_id = await self._fab(context)
            convert.check_upload(request.fab_id, "-", 0, fab_id)
            plan = await asyncio.to_thread(
                sync.deployment_plan,
                self.db,
                self.registry,
                self.cache,
                fab_id=fab_id,
                default_key_id=self.settings.signing_key_id,
                now=datetime.now(UTC),
            )
            return convert.plan_to_proto(plan)

        return await self._handling(context, run)

    async def _fab(self, context: Any) -> str:
        """The fab the call's token (and certificate, behind mTLS) proves."""
        try:
            token = bearer_token(context.invocation_metadata() or ())
        except ValueError as err:
            raise _RefusedError(grpc.StatusCode.UNAUTHENTICATED, str(err)) from None
        if token is None:
            raise _RefusedError(grpc.StatusCode.UNAUTHENTICATED, "no 'authorization: Bearer' token")
        principal = await asyncio.to_thread(tokens.authenticate, self.db, token)
        if principal is None:
            raise _RefusedError(grpc.StatusCode.UNAUTHENTICATED, "the token is unknown or revoked")
        if principal.role != tokens.FAB:
            raise _RefusedError(grpc.StatusCode.PERMISSION_DENIED, "CloudSync needs a fab token")
        names = (context.auth_context() or {}).get("x509_common_name") or []
        if names and [n.decode(errors="replace") for n in names] != [principal.user]:
            raise _RefusedError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the client certificate does not name fab {principal.user!r}",
            )
        return principal.user

    async def _handling(self, context: Any, run: Callable[[], Awaitable[T]]) -> T:
        try:
            return await run()
        except _RefusedError as err:
            await context.abort(err.code, str(err))
        except InvalidInput as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{err.field}: {err.reason}")
        except PermissionError as err:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(err))
        except NotFound as err:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(err))
        except OperationalError:
            logger.exception("the cloud database does not answer")
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the cloud database does not answer")
        raise AssertionError("context.abort raises")


def _ack(key: str, receipt: sync.Receipt) -> Any:
    return cloud_pb2.UploadAck(
        idempotency_key=key, accepted=receipt.accepted, rejected=receipt.rejected
    )


def _log_refused(fab_id: str, refused: list[str]) -> None:
    if refused:
        logger.warning(
            "fab %s: %d items refused, first: %s", fab_id, len(refused), "; ".join(refused[:3])
        )

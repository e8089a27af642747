"""Start-up of the fab server's gRPC endpoint (FabService)."""

from __future__ import annotations

import logging

import grpc  # type: ignore[import-untyped]
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server.rpc.servicer import FabServicer
from fab_server.services.classify import Classifier
from fab_server.settings import FabSettings
from wafercore import tls
from wafercore.runtime import ModelRuntime
from waferplatform.v1 import fab_pb2_grpc  # type: ignore[import-not-found]

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest request accepted: a full ResultBatch with maps, or 1,024 maps to classify."""

_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Edge uplinks hold one stream open for hours: notice dead peers, allow their pings.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
)


async def start_grpc_server(
    settings: FabSettings,
    sessions: async_sessionmaker[AsyncSession],
    runtime: ModelRuntime | Classifier | None,
) -> tuple[grpc.aio.Server, int]:
    """Start serving FabService on ``settings.grpc_host:grpc_port``.

    TLS (mutual when ``settings.tls_client_ca`` is set) comes from `fab_server.tls`; without
    a configured certificate the port is plaintext, for development. Every call is
    authenticated (`fab_server.rpc.auth`); with ``settings.grpc_allow_unauthenticated`` a
    warning is logged, since anyone who reaches the port can then write as any node.

    Args:
        settings: address, TLS files, limits.
        sessions: session factory of the fab database.
        runtime: the model for ClassifyBatch (or the `Classifier` the HTTP API shares); None
            loads ``settings.model_dir`` on first use.

    Returns:
        The started server (stop it with ``await server.stop(grace)``) and the bound port
        (the OS's pick when ``grpc_port`` is 0).

    Raises:
        ValueError: bad TLS settings or API tokens.
        RuntimeError: the address cannot be bound.
    """
    credentials = tls.server_credentials(
        tls_cert=settings.tls_cert, tls_key=settings.tls_key, tls_client_ca=settings.tls_client_ca
    )
    server = grpc.aio.server(options=_OPTIONS)
    classifier = (
        runtime if isinstance(runtime, Classifier) else Classifier(settings.model_dir, runtime)
    )
    servicer = FabServicer(settings, sessions, classifier)
    fab_pb2_grpc.add_FabServiceServicer_to_server(servicer, server)
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if not port:
        raise RuntimeError(f"cannot bind the gRPC address {address}")
    await server.start()
    if settings.grpc_allow_unauthenticated:
        logger.warning(
            "FAB_GRPC_ALLOW_UNAUTHENTICATED is on: gRPC calls without credentials on %s are "
            "trusted as whichever node they name; only for a one-machine demo",
            address,
        )
    return server, int(port)

"""Start-up of the CloudSync gRPC server (`wafer-cloud sync-server`, and the tests)."""

from __future__ import annotations

import logging

import grpc  # type: ignore[import-untyped]

from cloud.registry.registry import ModelRegistry
from cloud.settings import CloudSettings
from cloud.storage.db import Database
from cloud.sync.servicer import CloudSyncServicer
from wafercore import tls
from waferplatform.v1 import cloud_pb2_grpc  # type: ignore[import-not-found]

logger = logging.getLogger(__name__)
_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),  # a few thousand labels with maps
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
]


async def start_sync_server(
    settings: CloudSettings, db: Database, registry: ModelRegistry
) -> tuple[grpc.aio.Server, int]:
    """Serve CloudSync on ``settings.sync_host:sync_port``.

    TLS when ``sync_tls_cert`` and ``sync_tls_key`` are set, mutual TLS with
    ``sync_tls_client_ca`` (the certificate's common name is then the fab id); plaintext
    otherwise (development).

    Returns:
        The started server and its port (the OS's pick when ``sync_port`` is 0).

    Raises:
        ValueError: bad TLS settings (the message names the setting).
        RuntimeError: the address cannot be bound.
    """
    credentials = tls.server_credentials(
        tls_cert=settings.sync_tls_cert,
        tls_key=settings.sync_tls_key,
        tls_client_ca=settings.sync_tls_client_ca,
    )
    server = grpc.aio.server(options=_OPTIONS)
    cloud_pb2_grpc.add_CloudSyncServicer_to_server(
        CloudSyncServicer(settings, db, registry), server
    )
    address = f"{settings.sync_host}:{settings.sync_port}"
    if credentials is None:
        port = server.add_insecure_port(address)
        logger.warning("CloudSync on %s is plaintext: set CLOUD_SYNC_TLS_* in production", address)
    else:
        port = server.add_secure_port(address, credentials)
    if not port:
        raise RuntimeError(f"cannot bind the CloudSync address {address}")
    await server.start()
    return server, int(port)

"""TLS and mutual TLS on a real grpc.aio server with the development certificates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from fab_server.certs import DevCerts, make_dev_certs
from fab_server.settings import FabSettings
from wafercore.tls import channel_credentials, server_credentials
from waferplatform.v1 import fab_pb2, fab_pb2_grpc

pytestmark = pytest.mark.integration

TIMEOUT_S = 5.0
HANDSHAKE_FAILED = grpc.StatusCode.UNAVAILABLE


class _MetricsSink(fab_pb2_grpc.FabServiceServicer):
    """PushMetrics only; records the client certificate's common name of every call."""

    def __init__(self) -> None:
        self.peers: list[list[bytes]] = []

    async def PushMetrics(  # noqa: N802 (gRPC method name)
        self, request: fab_pb2.EdgeMetrics, context: grpc.aio.ServicerContext
    ) -> fab_pb2.PushMetricsResponse:
        self.peers.append(context.auth_context().get("x509_common_name", []))
        return fab_pb2.PushMetricsResponse()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("pki"), clients=("edge-01",))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("other-pki"), clients=("edge-01",))


def _settings(pki: DevCerts, *, mutual: bool) -> FabSettings:
    return FabSettings(
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        tls_client_ca=pki.ca.cert if mutual else None,
    )


async def _serve(settings: FabSettings) -> AsyncIterator[tuple[int, _MetricsSink]]:
    sink = _MetricsSink()
    server = grpc.aio.server()
    fab_pb2_grpc.add_FabServiceServicer_to_server(sink, server)
    port = server.add_secure_port(
        "127.0.0.1:0",
        server_credentials(
            tls_cert=settings.tls_cert,
            tls_key=settings.tls_key,
            tls_client_ca=settings.tls_client_ca,
        ),
    )
    await server.start()
    try:
        yield port, sink
    finally:
        await server.stop(grace=None)


@pytest_asyncio.fixture
async def mtls_server(pki: DevCerts) -> AsyncIterator[tuple[int, _MetricsSink]]:
    async for served in _serve(_settings(pki, mutual=True)):
        yield served


@pytest_asyncio.fixture
async def tls_server(pki: DevCerts) -> AsyncIterator[tuple[int, _MetricsSink]]:
    async for served in _serve(_settings(pki, mutual=False)):
        yield served


async def _push(
    port: int, credentials: grpc.ChannelCredentials, *, target_name: str | None = None
) -> grpc.StatusCode:
    options = [("grpc.ssl_target_name_override", target_name)] if target_name else []
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
        stub = fab_pb2_grpc.FabServiceStub(channel)
        try:
            await stub.PushMetrics(fab_pb2.EdgeMetrics(node_id="edge-01"), timeout=TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.asyncio
async def test_an_edge_node_with_a_certificate_from_the_ca_is_served(
    mtls_server: tuple[int, _MetricsSink], pki: DevCerts
) -> None:
    port, sink = mtls_server
    client = pki.clients["edge-01"]
    credentials = channel_credentials(ca=pki.ca.cert, cert=client.cert, key=client.key)
    assert await _push(port, credentials) == grpc.StatusCode.OK
    assert sink.peers == [[b"edge-01"]]  # the server knows which node is calling


@pytest.mark.asyncio
async def test_clients_without_a_certificate_of_the_ca_are_refused(
    mtls_server: tuple[int, _MetricsSink], pki: DevCerts, other_pki: DevCerts
) -> None:
    port, sink = mtls_server
    no_client_cert = channel_credentials(ca=pki.ca.cert)
    assert await _push(port, no_client_cert) == HANDSHAKE_FAILED

    foreign = other_pki.clients["edge-01"]  # same node id, signed by another CA
    foreign_cert = channel_credentials(ca=pki.ca.cert, cert=foreign.cert, key=foreign.key)
    assert await _push(port, foreign_cert) == HANDSHAKE_FAILED
    assert sink.peers == []


@pytest.mark.asyncio
async def test_a_server_not_named_in_its_certificate_or_from_another_ca_is_refused(
    mtls_server: tuple[int, _MetricsSink], pki: DevCerts, other_pki: DevCerts
) -> None:
    port, sink = mtls_server
    client = pki.clients["edge-01"]
    credentials = channel_credentials(ca=pki.ca.cert, cert=client.cert, key=client.key)
    assert await _push(port, credentials, target_name="fab.example") == HANDSHAKE_FAILED

    wrong_ca = channel_credentials(ca=other_pki.ca.cert, cert=client.cert, key=client.key)
    assert await _push(port, wrong_ca) == HANDSHAKE_FAILED
    assert sink.peers == []


@pytest.mark.asyncio
async def test_without_a_client_ca_tls_only_authenticates_the_server(
    tls_server: tuple[int, _MetricsSink], pki: DevCerts
) -> None:
    port, sink = tls_server
    assert await _push(port, channel_credentials(ca=pki.ca.cert)) == grpc.StatusCode.OK
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plaintext:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await fab_pb2_grpc.FabServiceStub(plaintext).PushMetrics(
                fab_pb2.EdgeMetrics(), timeout=TIMEOUT_S
            )
    assert refused.value.code() == HANDSHAKE_FAILED
    assert sink.peers == [[]]


def test_no_certificate_configured_means_a_plaintext_server() -> None:
    assert server_credentials(tls_cert=None, tls_key=None, tls_client_ca=None) is None


def test_incomplete_or_mismatched_configuration_fails_naming_the_setting(
    pki: DevCerts, other_pki: DevCerts, tmp_path: Path
) -> None:
    cases = [
        (FabSettings(tls_client_ca=pki.ca.cert), "tls_client_ca"),
        (FabSettings(tls_cert=pki.server.cert), "tls_cert, tls_key"),
        (FabSettings(tls_cert=pki.server.cert, tls_key=other_pki.server.key), "tls_key"),
        (FabSettings(tls_cert=tmp_path / "missing.pem", tls_key=pki.server.key), "tls_cert"),
        (FabSettings(tls_cert=pki.server.key, tls_key=pki.server.key), "tls_cert"),
    ]
    for settings, setting in cases:
        with pytest.raises(ValueError, match=f"^{setting}:"):
            server_credentials(
                tls_cert=settings.tls_cert,
                tls_key=settings.tls_key,
                tls_client_ca=settings.tls_client_ca,
            )
    with pytest.raises(ValueError, match=r"^cert, key:"):
        channel_credentials(ca=pki.ca.cert, cert=pki.clients["edge-01"].cert)

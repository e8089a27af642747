"""How the node reaches its fab: channel security per setting, errors naming it, the node
token on every call, backoff."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from pydantic import SecretStr

from edge.fab_client import (
    Backoff,
    bearer_interceptors,
    channel_credentials,
    channel_options,
    open_channel,
)
from edge.settings import EdgeSettings
from fab_server.certs import DevCerts, make_dev_certs
from fab_server.settings import FabSettings
from wafercore.tls import server_credentials
from waferplatform.v1 import common_pb2, fab_pb2, fab_pb2_grpc

NODE = "edge-01"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("pki"), clients=(NODE, "edge-02"))


def _settings(**values: Any) -> EdgeSettings:
    return EdgeSettings(node_id=NODE, fab_address="127.0.0.1:50051", **values)


def test_no_ca_means_plaintext() -> None:
    assert channel_credentials(_settings()) is None


def test_a_ca_gives_tls_and_a_client_certificate_mutual_tls(pki: DevCerts) -> None:
    client = pki.clients[NODE]
    server_only = channel_credentials(_settings(tls_ca=pki.ca.cert))
    mutual = channel_credentials(
        _settings(tls_ca=pki.ca.cert, tls_cert=client.cert, tls_key=client.key)
    )
    assert isinstance(server_only, grpc.ChannelCredentials)
    assert isinstance(mutual, grpc.ChannelCredentials)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tls_cert": "CLIENT_CERT", "tls_key": "CLIENT_KEY"}, "tls_ca: a client certificate"),
        ({"tls_ca": "CA", "tls_cert": "CLIENT_CERT"}, "tls_cert, tls_key: set both or neither"),
        ({"tls_ca": "CA", "tls_key": "CLIENT_KEY"}, "tls_cert, tls_key: set both or neither"),
        ({"tls_ca": "MISSING"}, "tls_ca: cannot read"),
        ({"tls_ca": "CLIENT_KEY"}, "tls_ca: .* holds no PEM certificate"),
        ({"tls_ca": "CA", "tls_cert": "CA_KEY", "tls_key": "CLIENT_KEY"}, "tls_cert: .* no PEM"),
        (
            {"tls_ca": "CA", "tls_cert": "CLIENT_CERT", "tls_key": "CA"},
            "tls_key: .* no unencrypted",
        ),
        (
            {"tls_ca": "CA", "tls_cert": "CLIENT_CERT", "tls_key": "OTHER_KEY"},
            "tls_key: .* does not belong to the certificate",
        ),
    ],
)
def test_bad_tls_settings_fail_naming_the_setting(
    pki: DevCerts, tmp_path: Path, values: dict[str, str], message: str
) -> None:
    files = {
        "CA": pki.ca.cert,
        "CA_KEY": pki.ca.key,
        "CLIENT_CERT": pki.clients[NODE].cert,
        "CLIENT_KEY": pki.clients[NODE].key,
        "OTHER_KEY": pki.clients["edge-02"].key,
        "MISSING": tmp_path / "nowhere.pem",
    }
    settings = _settings(**{name: files[key] for name, key in values.items()})
    with pytest.raises(ValueError, match=message):
        channel_credentials(settings)


def test_reconnect_backoff_follows_the_uplink_backoff() -> None:
    options = dict(
        channel_options(_settings(uplink_backoff_initial_s=0.25, uplink_backoff_max_s=8))
    )
    assert options["grpc.initial_reconnect_backoff_ms"] == 250
    assert options["grpc.min_reconnect_backoff_ms"] == 250
    assert options["grpc.max_reconnect_backoff_ms"] == 8000
    assert options["grpc.keepalive_time_ms"] > 0 and options["grpc.keepalive_permit_without_calls"]


@pytest.mark.asyncio
async def test_open_channel_needs_a_fab_address() -> None:
    with pytest.raises(ValueError, match="fab_address: not set"):
        open_channel(EdgeSettings(node_id=NODE, fab_address=None))


@pytest.mark.asyncio
async def test_open_channel_opens_plaintext_and_tls_channels(pki: DevCerts) -> None:
    client = pki.clients[NODE]
    for settings in (
        _settings(),
        _settings(tls_ca=pki.ca.cert, tls_cert=client.cert, tls_key=client.key),
    ):
        channel = open_channel(settings)
        try:
            assert isinstance(channel, grpc.aio.Channel)
        finally:
            await channel.close()


class FullJitter(random.Random):
    """Backoff delays at their ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    ceiling = Backoff(0.5, 30.0, FullJitter())
    assert [ceiling.next_delay() for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    ceiling.reset()
    assert ceiling.next_delay() == 0.5

    jittered = Backoff(0.5, 30.0, random.Random(3))
    delays = [jittered.next_delay() for _ in range(2000)]
    assert all(0.0 <= d <= 30.0 for d in delays)
    assert len(set(delays)) == len(delays)  # full jitter: nodes do not retry in lockstep
    assert min(delays[10:]) < 3.0 < max(delays[10:])


class MetadataRecorder(fab_pb2_grpc.FabServiceServicer):
    """A fab that answers three kinds of call and records each call's metadata."""

    def __init__(self) -> None:
        self.seen: dict[str, list[str]] = {}

    def _record(self, method: str, context: grpc.aio.ServicerContext) -> None:
        metadata = context.invocation_metadata() or ()
        self.seen[method] = [value for key, value in metadata if key == "authorization"]

    async def PushMetrics(  # noqa: N802 (gRPC method name)
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        self._record("PushMetrics", context)
        return fab_pb2.PushMetricsResponse()

    async def DownloadModel(  # noqa: N802 (gRPC method name)
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        self._record("DownloadModel", context)
        yield fab_pb2.ModelChunk(offset=0, data=b"x", total_size=1)

    async def StreamResults(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        self._record("StreamResults", context)
        async for batch in request_iterator:
            yield fab_pb2.StreamAck(node_id=batch.node_id, batch_id=batch.batch_id)


@asynccontextmanager
async def _recording_server(
    pki: DevCerts, *, tls: bool
) -> AsyncIterator[tuple[MetadataRecorder, dict[str, Any]]]:
    """A real in-process server and the edge settings (address, CA) that reach it."""
    servicer = MetadataRecorder()
    server = grpc.aio.server()
    fab_pb2_grpc.add_FabServiceServicer_to_server(servicer, server)
    edge: dict[str, Any] = {}
    if tls:
        settings = FabSettings(tls_cert=pki.server.cert, tls_key=pki.server.key)
        port = server.add_secure_port(
            "127.0.0.1:0",
            server_credentials(
                tls_cert=settings.tls_cert,
                tls_key=settings.tls_key,
                tls_client_ca=settings.tls_client_ca,
            ),
        )
        edge["tls_ca"] = pki.ca.cert
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, {"fab_address": f"127.0.0.1:{port}", **edge}
    finally:
        await server.stop(grace=None)


@pytest_asyncio.fixture(params=["plaintext", "tls"])
async def recorder(
    request: pytest.FixtureRequest, pki: DevCerts
) -> AsyncIterator[tuple[MetadataRecorder, dict[str, Any]]]:
    """`_recording_server` over plaintext, then over TLS (call credentials would fail there)."""
    async with _recording_server(pki, tls=request.param == "tls") as served:
        yield served


async def _call_all_kinds(channel: grpc.aio.Channel, metadata: Any = None) -> None:
    stub = fab_pb2_grpc.FabServiceStub(channel)
    await stub.PushMetrics(fab_pb2.EdgeMetrics(node_id=NODE), timeout=10, metadata=metadata)
    request = fab_pb2.DownloadModelRequest(node_id=NODE)
    chunks = [c async for c in stub.DownloadModel(request, timeout=10, metadata=metadata)]
    assert len(chunks) == 1
    call = stub.StreamResults(timeout=10, metadata=metadata)
    result = common_pb2.Classification(node_id=NODE, sequence=1)
    await call.write(fab_pb2.ResultBatch(node_id=NODE, batch_id="b1", results=[result]))
    assert (await call.read()).batch_id == "b1"
    await call.done_writing()


@pytest.mark.asyncio
async def test_the_node_token_goes_with_every_kind_of_call(
    recorder: tuple[MetadataRecorder, dict[str, Any]],
) -> None:
    servicer, where = recorder
    token = "wfn_0123456789abcdefghijklmnopqrstuvwxyzABCDE"
    settings = EdgeSettings(node_id=NODE, node_token=SecretStr(token), **where)
    assert token not in repr(settings)  # a secret, not a loggable value
    channel = open_channel(settings)
    try:
        await _call_all_kinds(channel)
    finally:
        await channel.close()
    expected = [f"Bearer {token}"]
    assert servicer.seen == {m: expected for m in ("PushMetrics", "DownloadModel", "StreamResults")}


@pytest.mark.asyncio
async def test_without_a_token_no_authorization_is_sent(
    recorder: tuple[MetadataRecorder, dict[str, Any]],
) -> None:
    servicer, where = recorder
    channel = open_channel(EdgeSettings(node_id=NODE, **where))
    try:
        await _call_all_kinds(channel)
    finally:
        await channel.close()
    assert servicer.seen == {m: [] for m in ("PushMetrics", "DownloadModel", "StreamResults")}


@pytest.mark.asyncio
async def test_a_call_with_its_own_authorization_keeps_it(pki: DevCerts) -> None:
    async with (
        _recording_server(pki, tls=False) as (servicer, where),
        grpc.aio.insecure_channel(
            where["fab_address"], interceptors=bearer_interceptors("wfn_node")
        ) as channel,
    ):
        await _call_all_kinds(channel, metadata=(("authorization", "Bearer api-token"),))
    assert servicer.seen["PushMetrics"] == ["Bearer api-token"]
    assert servicer.seen["StreamResults"] == ["Bearer api-token"]

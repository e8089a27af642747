"""How the node reaches its fab: channel security per setting, errors naming it, backoff."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import grpc
import pytest

from edge.fab_client import Backoff, channel_credentials, channel_options, open_channel
from edge.settings import EdgeSettings
from fab_server.certs import DevCerts, make_dev_certs

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

"""How the edge node reaches its fab server: the gRPC channel and the reconnect backoff.

The channel is plaintext, TLS or mutual TLS, with keepalive; one channel serves the uplink,
the metrics push and the OTA agent. With ``node_token`` set, every call on it carries
``authorization: Bearer <token>``, added by client interceptors: gRPC refuses call credentials
on a plaintext channel, and a fab reached over plaintext still needs to know who calls.
`Backoff` is the retry policy of whatever calls the fab. Certificate files are read and
checked when the channel is opened (`wafercore.tls`), so a misconfigured node fails at start-up
with a message naming the setting instead of failing every handshake later.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import grpc  # type: ignore[import-untyped]

from edge.settings import EdgeSettings
from wafercore import tls

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest message either way: a ResultBatch of a few hundred results with maps fits easily."""

KEEPALIVE_TIME_MS = 60_000
"""Ping an idle connection every minute: a stream held open for hours notices a dead fab."""
KEEPALIVE_TIMEOUT_MS = 20_000
"""A ping unanswered this long closes the connection (the fab server uses the same values)."""


def channel_credentials(settings: EdgeSettings) -> grpc.ChannelCredentials | None:
    """TLS credentials for the channel to the fab, or None for plaintext (development).

    Args:
        settings: ``tls_ca`` (the CA that signed the fab server's certificate) enables TLS;
            ``tls_cert`` and ``tls_key`` (both or neither) add this node's client certificate
            for mutual TLS.

    Raises:
        ValueError: a client certificate without ``tls_ca``, only one of ``tls_cert`` and
            ``tls_key``, an unreadable file or a key that does not match the certificate (the
            message names the setting).
    """
    has_client_cert = settings.tls_cert is not None or settings.tls_key is not None
    if settings.tls_ca is None:
        if has_client_cert:
            # The fab runs its own PKI: the system's public roots cannot vouch for it.
            raise ValueError("tls_ca: a client certificate (tls_cert, tls_key) needs tls_ca too")
        return None
    return tls.channel_credentials(
        ca=settings.tls_ca, cert=settings.tls_cert, key=settings.tls_key, prefix="tls_"
    )


def channel_options(settings: EdgeSettings) -> list[tuple[str, int]]:
    """gRPC channel arguments: message limits, keepalive and reconnect backoff.

    The channel's own reconnect backoff is bounded by the uplink's, so a fab that comes back
    is reached within ``uplink_backoff_max_s`` rather than gRPC's default of two minutes.
    """
    initial_ms = max(1, round(settings.uplink_backoff_initial_s * 1000))
    max_ms = max(initial_ms, round(settings.uplink_backoff_max_s * 1000))
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", initial_ms),
        ("grpc.min_reconnect_backoff_ms", initial_ms),
        ("grpc.max_reconnect_backoff_ms", max_ms),
    ]


class _BearerToken:
    """Adds ``authorization: Bearer <token>`` to a call's metadata, unless the call sets one."""

    def __init__(self, token: str) -> None:
        self._value = f"Bearer {token}"

    def details(self, details: Any) -> Any:
        """``details`` with the header added."""
        metadata = tuple(details.metadata or ())
        if any(key == "authorization" for key, _ in metadata):
            return details  # an explicit header (a tool's API token) wins
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*metadata, ("authorization", self._value)),
            details.credentials,
            details.wait_for_ready,
        )


# grpc.aio files each interceptor under the FIRST call kind it implements, so one object per
# kind: a class implementing all four would only ever see unary-unary calls.
class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, bearer: _BearerToken) -> None:
        self._bearer = bearer

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._bearer.details(details), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, bearer: _BearerToken) -> None:
        self._bearer = bearer

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._bearer.details(details), request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, bearer: _BearerToken) -> None:
        self._bearer = bearer

    async def intercept_stream_unary(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._bearer.details(details), request_iterator)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, bearer: _BearerToken) -> None:
        self._bearer = bearer

    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._bearer.details(details), request_iterator)


def bearer_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors that send ``authorization: Bearer <token>`` on every call.

    Pass them to ``grpc.aio.insecure_channel`` or ``secure_channel`` (``interceptors=``); they
    cover all four call kinds. A call that sets its own ``authorization`` keeps it.
    """
    bearer = _BearerToken(token)
    return [_UnaryUnary(bearer), _UnaryStream(bearer), _StreamUnary(bearer), _StreamStream(bearer)]


def channel_interceptors(settings: EdgeSettings) -> Sequence[grpc.aio.ClientInterceptor]:
    """The interceptors `open_channel` installs: the node token's, when one is set."""
    if settings.node_token is None:
        return []
    return bearer_interceptors(settings.node_token.get_secret_value())


def open_channel(settings: EdgeSettings) -> grpc.aio.Channel:
    """Open the channel to ``settings.fab_address`` (connects lazily, on the first call).

    Call from within the event loop that will use the channel; close it with
    ``await channel.close()``.

    Args:
        settings: ``fab_address`` ("host:port"), the TLS files, ``node_token`` and the uplink
            backoff.

    Returns:
        A grpc.aio channel: TLS (mutual with a client certificate) when ``tls_ca`` is set,
        plaintext otherwise; every call carries the node token when one is set.

    Raises:
        ValueError: ``fab_address`` is not set, or the TLS settings are bad.
    """
    if not settings.fab_address:
        raise ValueError("fab_address: not set; this node has no fab to talk to")
    credentials = channel_credentials(settings)
    options = channel_options(settings)
    interceptors = channel_interceptors(settings)
    if credentials is None:
        return grpc.aio.insecure_channel(
            settings.fab_address, options=options, interceptors=interceptors
        )
    return grpc.aio.secure_channel(
        settings.fab_address, credentials, options=options, interceptors=interceptors
    )


class Backoff:
    """Exponential backoff with full jitter: delay n is uniform in [0, min(max, initial * 2^n)].

    Full jitter spreads the reconnects of a fab's nodes after an outage, so they do not all
    arrive in the same second.
    """

    def __init__(self, initial_s: float, max_s: float, rng: random.Random) -> None:
        self._initial = initial_s
        self._max = max(max_s, initial_s)
        self._rng = rng
        self._attempt = 0

    @property
    def max_s(self) -> float:
        """The largest delay."""
        return self._max

    def next_delay(self) -> float:
        """The delay before the next attempt (seconds); each call doubles the ceiling."""
        # Capped exponent: 2**attempt must not overflow after days of failures.
        ceiling = min(self._max, self._initial * 2 ** min(self._attempt, 62))
        self._attempt += 1
        return self._rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        """Start again from ``initial_s`` (after a success)."""
        self._attempt = 0

"""The fab's connection to the cloud: CloudSync over gRPC and the REST API for artifacts.

Both carry the fab's cloud token (role ``fab``) as a bearer credential; TLS when
``sync.tls_ca`` is set, mutual TLS when ``sync.tls_cert`` and ``sync.tls_key`` are too. Every
call has the deadline ``sync.timeout_s``. Errors come out as `CloudUnavailable` (the cloud
could not be reached: try again later) or `CloudRefused` (it answered no), never as gRPC or
HTTP library exceptions.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc  # type: ignore[import-untyped]
import httpx

from fab_server.settings import SyncSettings
from wafercore.tls import channel_credentials
from waferplatform.v1 import cloud_pb2_grpc  # type: ignore[import-not-found]

SHA256_HEADER = "X-Artifact-SHA256"
KEY_ID_HEADER = "X-Signature-Key-Id"
_UNAVAILABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}
_DOWNLOAD_BLOCK = 1 << 20


class SyncError(Exception):
    """A sync pass could not complete; the message says why."""


class CloudUnavailable(SyncError):  # noqa: N818 (reads as the condition it reports)
    """The cloud could not be reached (or did not answer in time); nothing was acknowledged."""


class CloudRefused(SyncError):  # noqa: N818
    """The cloud answered with an error (bad token, wrong fab id, invalid request)."""


@dataclass(frozen=True)
class DownloadedArtifact:
    """An artifact fetched from the cloud API, with what the API said about it."""

    path: Path
    sha256: str
    announced_sha256: str
    key_id: str


def _ssl_context(sync: SyncSettings) -> ssl.SSLContext | bool:
    if sync.tls_ca is None:
        return True
    context = ssl.create_default_context(cafile=str(sync.tls_ca))
    if sync.tls_cert is not None and sync.tls_key is not None:
        context.load_cert_chain(str(sync.tls_cert), str(sync.tls_key))
    return context


def _grpc_error(call: str, exc: grpc.aio.AioRpcError) -> SyncError:
    code = exc.code()
    if code in _UNAVAILABLE:
        return CloudUnavailable(
            f"CloudSync.{call}: the cloud is unreachable ({code.name}): {exc.details()}"
        )
    return CloudRefused(f"CloudSync.{call} refused ({code.name}): {exc.details()}")


class CloudClient:
    """A CloudSync stub and an HTTP client for one sync pass; use as ``async with``.

    Args:
        sync: target, URL, token, TLS files and deadline.
        http_transport: replaces httpx's network transport (tests).
    """

    def __init__(
        self, sync: SyncSettings, *, http_transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        if sync.token is None:
            raise SyncError("sync.token: must be set to sync with the cloud")
        token = sync.token.get_secret_value()
        self._timeout = sync.timeout_s
        self._metadata = (("authorization", f"Bearer {token}"),)
        try:
            verify = _ssl_context(sync)
            credentials = (
                channel_credentials(
                    ca=sync.tls_ca, cert=sync.tls_cert, key=sync.tls_key, prefix="sync.tls_"
                )
                if sync.tls_ca is not None
                else None
            )
        except (ValueError, OSError) as exc:  # ssl.SSLError is an OSError
            raise SyncError(f"sync.tls_ca/tls_cert/tls_key: {exc}") from None
        if credentials is not None:
            self._channel = grpc.aio.secure_channel(sync.cloud_grpc_target, credentials)
        else:
            self._channel = grpc.aio.insecure_channel(sync.cloud_grpc_target)
        self._stub = cloud_pb2_grpc.CloudSyncStub(self._channel)
        self._http = httpx.AsyncClient(
            base_url=sync.cloud_api_url,
            headers={"Authorization": f"Bearer {token}"},
            verify=verify,
            timeout=sync.timeout_s,
            transport=http_transport,
        )

    async def __aenter__(self) -> CloudClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel and the HTTP client."""
        await self._http.aclose()
        await self._channel.close()

    async def _call(self, name: str, request: Any) -> Any:
        method = getattr(self._stub, name)
        try:
            return await method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _grpc_error(name, exc) from None

    async def upload_labels(self, request: Any) -> Any:
        """UploadLabels; returns the UploadAck."""
        return await self._call("UploadLabels", request)

    async def upload_aggregates(self, request: Any) -> Any:
        """UploadAggregates; returns the UploadAck."""
        return await self._call("UploadAggregates", request)

    async def get_deployments(self, request: Any) -> Any:
        """GetDeployments; returns the plan."""
        return await self._call("GetDeployments", request)

    async def fetch_artifact(
        self, version: str, target: Path, *, max_bytes: int
    ) -> DownloadedArtifact:
        """Download ``GET /models/{version}/artifact`` into ``target``, hashing it on the way.

        Raises:
            CloudUnavailable: the API could not be reached.
            CloudRefused: an HTTP error, or more than ``max_bytes`` bytes.
        """
        digest = hashlib.sha256()
        size = 0
        try:
            async with self._http.stream("GET", f"/models/{version}/artifact") as response:
                _check_status(response, f"artifact of {version}")
                with target.open("wb") as handle:
                    async for block in response.aiter_bytes(_DOWNLOAD_BLOCK):
                        size += len(block)
                        if size > max_bytes:
                            raise CloudRefused(
                                f"artifact of {version} is over the announced {max_bytes} bytes"
                            )
                        digest.update(block)
                        handle.write(block)
                headers = response.headers
        except httpx.TransportError as exc:
            raise CloudUnavailable(f"cloud API unreachable fetching {version}: {exc}") from None
        return DownloadedArtifact(
            path=target,
            sha256=digest.hexdigest(),
            announced_sha256=headers.get(SHA256_HEADER, "").lower(),
            key_id=headers.get(KEY_ID_HEADER, ""),
        )

    async def fetch_signature(self, version: str) -> bytes:
        """``GET /models/{version}/artifact.sig``: the detached signature's raw bytes."""
        try:
            response = await self._http.get(f"/models/{version}/artifact.sig")
        except httpx.TransportError as exc:
            raise CloudUnavailable(f"cloud API unreachable fetching {version}.sig: {exc}") from None
        _check_status(response, f"signature of {version}")
        return response.content


def _check_status(response: httpx.Response, what: str) -> None:
    if response.status_code >= 400:
        raise CloudRefused(f"cloud API refused the {what}: HTTP {response.status_code}")

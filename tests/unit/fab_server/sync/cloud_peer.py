"""The sync tests' stand-in for the cloud: a grpc.aio CloudSync servicer that records every
request, and an httpx handler that serves signed artifacts.

It behaves like the contract says the cloud does (first ack per idempotency key, labels stored
once by (wafer_key, reviewer_key, reviewed_at), aggregates replaced by (node, date, version),
bearer token and fab id checked), and can lose an acknowledgement on purpose.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from waferplatform.v1 import cloud_pb2, cloud_pb2_grpc  # type: ignore[import-not-found]


@dataclass
class RecordingCloudPeer(cloud_pb2_grpc.CloudSyncServicer):  # type: ignore[misc]
    """CloudSync of the tests: records requests, answers as the contract says."""

    token: str
    fab_id: str
    plan: Any = None
    lose_ack_of_call: int | None = None  # the n-th upload (1-based) is stored, then UNAVAILABLE
    requests: list[Any] = field(default_factory=list)
    acks: dict[str, Any] = field(default_factory=dict)
    labels: dict[tuple[str, str, int], Any] = field(default_factory=dict)
    aggregates: dict[tuple[str, str, str], Any] = field(default_factory=dict)
    uploads: int = 0

    async def _check(self, request: Any, context: Any) -> None:
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get("authorization") != f"Bearer {self.token}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
        if request.fab_id != self.fab_id:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not your fab")

    async def _upload(self, request: Any, context: Any, items: list[tuple[Any, Any]]) -> Any:
        self.requests.append(request)
        await self._check(request, context)
        self.uploads += 1
        if request.idempotency_key not in self.acks:
            accepted = 0
            for store, (key, item) in items:
                accepted += key not in store or store is self.aggregates
                store[key] = item
            self.acks[request.idempotency_key] = cloud_pb2.UploadAck(
                idempotency_key=request.idempotency_key, accepted=accepted
            )
        if self.uploads == self.lose_ack_of_call:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost (on purpose)")
        return self.acks[request.idempotency_key]

    async def UploadLabels(self, request: Any, context: Any) -> Any:  # noqa: N802
        items = [
            (self.labels, ((lab.wafer_key, lab.reviewer_key, lab.reviewed_at.seconds), lab))
            for lab in request.labels
        ]
        return await self._upload(request, context, items)

    async def UploadAggregates(self, request: Any, context: Any) -> Any:  # noqa: N802
        items = [
            (self.aggregates, ((a.node_id, a.date, a.model_version), a)) for a in request.aggregates
        ]
        return await self._upload(request, context, items)

    async def GetDeployments(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.requests.append(request)
        await self._check(request, context)
        return self.plan or cloud_pb2.GetDeploymentsResponse(fab_id=self.fab_id)


async def serve(peer: RecordingCloudPeer) -> tuple[grpc.aio.Server, int]:
    """Start ``peer`` on a free loopback port."""
    server = grpc.aio.server()
    cloud_pb2_grpc.add_CloudSyncServicer_to_server(peer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@dataclass
class ArtifactShop:
    """Signed artifacts behind the cloud API's two routes, for httpx's MockTransport."""

    key_id: str
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    signatures: dict[str, bytes] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def pin(self, trusted_keys_dir: Path) -> None:
        """Trust this shop's key (``<key_id>.pub``)."""
        trusted_keys_dir.mkdir(parents=True, exist_ok=True)
        pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (trusted_keys_dir / f"{self.key_id}.pub").write_bytes(pem)

    def add(self, version: str, data: bytes, *, signer: Ed25519PrivateKey | None = None) -> str:
        """Publish ``data`` as ``version``, signed (by ``signer``, default the shop's key)."""
        digest = hashlib.sha256(data).digest()
        self.artifacts[version] = data
        self.signatures[version] = (signer or self.key).sign(digest)
        return digest.hex()

    def entry(self, node_id: str, version: str, stage: int, rollout_id: str = "") -> Any:
        """The plan's NodeDeployment of ``version`` for ``node_id``."""
        data = self.artifacts[version]
        return cloud_pb2.NodeDeployment(
            node_id=node_id,
            model_version=version,
            stage=stage,
            rollout_id=rollout_id,
            sha256=hashlib.sha256(data).hexdigest(),
            size_bytes=len(data),
            signature=self.signatures[version],
            signing_key_id=self.key_id,
        )

    def handler(self, request: httpx.Request) -> httpx.Response:
        """``GET /models/{version}/artifact`` and ``.../artifact.sig``."""
        self.requests.append(request)
        parts = request.url.path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "models" or parts[1] not in self.artifacts:
            return httpx.Response(404)
        data = self.artifacts[parts[1]]
        headers = {
            "X-Artifact-SHA256": hashlib.sha256(data).hexdigest(),
            "X-Signature-Key-Id": self.key_id,
        }
        body = data if parts[2] == "artifact" else self.signatures[parts[1]]
        return httpx.Response(200, content=body, headers=headers)


def plan(fab_id: str, generated_at: datetime, entries: list[Any]) -> Any:
    """A GetDeploymentsResponse."""
    response = cloud_pb2.GetDeploymentsResponse(fab_id=fab_id, deployments=entries)
    response.generated_at.FromDatetime(generated_at)
    return response

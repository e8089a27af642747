"""Over-the-air model updates: poll the fab, download, verify, golden-check, swap, roll back.

A node serves a new model only after four independent checks: the signature of the digest the
fab announced (before a byte is downloaded), the downloaded bytes against that digest, a safe
unpack, and the candidate, loaded beside the serving model, reproducing its artifact's golden
set. Any failure leaves the serving model untouched, is logged at ERROR with its reason and
counted (``edge_ota_rejected_total{reason}``), and that assignment is not tried again until the
fab changes it: a bad artifact must not cost a download every poll. A failure that is not the
artifact's fault (fab unreachable, stream broken too often, disk full) defers to the next poll,
which resumes a partial download where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
import shutil
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from edge.model_store import ModelStore, NoPreviousModel
from edge.settings import EdgeSettings
from wafercore.artifact import (
    GOLDEN_ATOL,
    GOLDEN_FILE,
    MAX_ARTIFACT_BYTES,
    ArtifactError,
    GoldenCheckError,
    GoldenSet,
    check_golden,
    unpack_artifact,
)
from wafercore.runtime import ModelLoadError, ModelRuntime
from wafercore.signature import SignatureError, verify_artifact, verify_digest
from waferplatform.v1 import fab_pb2, fab_pb2_grpc  # type: ignore[import-not-found]

log = logging.getLogger(__name__)

ARTIFACT_FORMAT = "onnx"
"""The artifact format this node runs (ONNX Runtime on CPU)."""
ASSIGNMENT_TIMEOUT_S = 30.0
"""Deadline of one GetModelAssignment call."""
STREAM_TIMEOUT_S = 300.0
"""Deadline of one DownloadModel stream: a stalled stream ends and resumes where it stopped."""
_ARTIFACT_NAME = "artifact.tar"
_CANDIDATE_NAME = "candidate"
# Disk needed beyond the download, in artifact sizes: the unpacked copy plus slack, so an
# update never fills the disk the outbox needs.
_UNPACK_FACTOR = 1.5
# gRPC codes after which resuming the download can succeed; others are the request's fault.
_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNKNOWN,
    }
)
# One counter per registry (a registry refuses a second metric of the same name).
_COUNTERS: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()


class OtaStatus(enum.StrEnum):
    """What one poll did."""

    KEEP = "keep"
    """Nothing to do: the node runs what the fab assigns (or nothing is assigned)."""
    INSTALLED = "installed"
    """A new version was verified, golden-checked and is now served."""
    ROLLED_BACK = "rolled_back"
    """The kept previous version is served again, as the fab commanded."""
    REJECTED = "rejected"
    """The assignment cannot be carried out; the serving model is unchanged."""
    DEFERRED = "deferred"
    """Not the artifact's fault (fab unreachable, broken download, no disk): next poll."""


@dataclass(frozen=True)
class OtaOutcome:
    """The result of one poll.

    Attributes:
        status: what happened.
        version: the version served after the poll.
        reason: why, for REJECTED and DEFERRED (the rejection code first); empty otherwise.
    """

    status: OtaStatus
    version: str
    reason: str = ""


class _RejectedError(Exception):
    """The assignment cannot be carried out; ``reason`` is the counter's label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class _DeferredError(Exception):
    """Not the artifact's fault; the next poll tries again."""


def rejected_counter(registry: CollectorRegistry = REGISTRY) -> Counter:
    """The ``edge_ota_rejected_total{reason}`` counter of a registry (created once per registry)."""
    if registry not in _COUNTERS:
        _COUNTERS[registry] = Counter(
            "edge_ota_rejected_total",
            "Model assignments the OTA agent refused, by reason.",
            ["reason"],
            registry=registry,
        )
    return _COUNTERS[registry]


class OtaAgent:
    """Keeps the node on the model version its fab assigns, never serving an unverified one.

    Args:
        settings: ``node_id``, ``trusted_keys_dir``, ``runtime_threads``,
            ``ota_poll_interval_s``.
        store: the node's model store (current and previous model, atomic swap).
        channel: gRPC channel to the fab (`edge.fab_client.open_channel`).
        registry: Prometheus registry of the rejection counter.
        golden_atol: tolerance of the golden check on probabilities.
        download_attempts: streams tried per poll before a download is deferred.
        retry_delay_s: pause before resuming a broken stream (grows with each attempt).
    """

    def __init__(
        self,
        settings: EdgeSettings,
        store: ModelStore,
        channel: Any,
        *,
        registry: CollectorRegistry = REGISTRY,
        golden_atol: float = GOLDEN_ATOL,
        download_attempts: int = 5,
        retry_delay_s: float = 1.0,
    ) -> None:
        if download_attempts < 1:
            raise ValueError("download_attempts must be at least 1")
        self._settings = settings
        self._store = store
        self._stub = fab_pb2_grpc.FabServiceStub(channel)
        self._rejections = rejected_counter(registry)
        self._golden_atol = golden_atol
        self._attempts = download_attempts
        self._retry_delay_s = retry_delay_s
        self._lock = asyncio.Lock()
        # The assignment last refused and its outcome: not retried until the fab changes it.
        self._refused: tuple[tuple[Any, ...], OtaOutcome] | None = None
        # A download left incomplete by an earlier poll, resumed when the same artifact comes.
        self._partial: tuple[tuple[Any, ...], Path] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Poll at once, then every ``ota_poll_interval_s`` (±10 %) until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.poll_once()
            except Exception:  # the agent must outlive any single poll's bug
                log.exception("OTA poll failed unexpectedly; trying again at the next poll")
            delay = self._settings.ota_poll_interval_s * random.uniform(0.9, 1.1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    async def poll_once(self) -> OtaOutcome:
        """Ask the fab what to run (reporting what is installed) and carry it out."""
        async with self._lock:
            installed = self._store.current.version
            request = fab_pb2.GetModelAssignmentRequest(
                node_id=self._settings.node_id,
                installed_version=installed,
                previous_version=self._store.previous_version or "",
                artifact_format=ARTIFACT_FORMAT,
            )
            try:
                answer = await self._stub.GetModelAssignment(request, timeout=ASSIGNMENT_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                reason = f"GetModelAssignment failed: {exc.code().name} {exc.details()}"
                log.warning("OTA: %s", reason)
                return OtaOutcome(OtaStatus.DEFERRED, installed, reason)
            key = _assignment_key(answer)
            if self._partial is not None and self._partial[0] != key:
                await self._discard_partial()
            if self._refused is not None:
                if self._refused[0] == key:
                    return self._refused[1]
                self._refused = None
            try:
                return await self._carry_out(answer, key)
            except _RejectedError as exc:
                outcome = OtaOutcome(OtaStatus.REJECTED, self._store.current.version, str(exc))
                log.error("OTA: refused %s: %s", answer.desired_version, exc)
                self._rejections.labels(reason=exc.reason).inc()
                self._refused = (key, outcome)
                return outcome
            except _DeferredError as exc:
                log.warning("OTA: %s deferred to the next poll: %s", answer.desired_version, exc)
                return OtaOutcome(OtaStatus.DEFERRED, self._store.current.version, str(exc))
            except OSError as exc:  # the node's disk, not the artifact: try again next poll
                log.error("OTA: %s deferred, local I/O failed: %s", answer.desired_version, exc)
                return OtaOutcome(
                    OtaStatus.DEFERRED, self._store.current.version, f"local I/O failed: {exc}"
                )

    async def _carry_out(self, answer: Any, key: tuple[Any, ...]) -> OtaOutcome:
        action = answer.action
        if action == fab_pb2.MODEL_ACTION_KEEP:
            return OtaOutcome(OtaStatus.KEEP, self._store.current.version)
        if action == fab_pb2.MODEL_ACTION_ROLLBACK:
            return await self._rollback(answer.desired_version)
        if action != fab_pb2.MODEL_ACTION_INSTALL:
            raise _RejectedError("bad_assignment", f"unknown action {action}")
        return await self._install(answer, key)

    async def _rollback(self, version: str) -> OtaOutcome:
        previous = self._store.previous_version
        if previous != version:
            raise _RejectedError(
                "no_previous_model",
                f"the fab asks to roll back to {version}, this node keeps {previous or 'nothing'}",
            )
        try:
            restored = await asyncio.to_thread(self._store.rollback)
        except NoPreviousModel as exc:
            raise _RejectedError("no_previous_model", str(exc)) from None
        log.info("OTA: rolled back to %s as the fab commanded", restored)
        return OtaOutcome(OtaStatus.ROLLED_BACK, restored)

    async def _install(self, answer: Any, key: tuple[Any, ...]) -> OtaOutcome:
        version = answer.desired_version
        keys_dir = self._settings.trusted_keys_dir
        if keys_dir is None:
            raise _RejectedError("no_trusted_keys", "EDGE_TRUSTED_KEYS_DIR is not set")
        if answer.size_bytes > MAX_ARTIFACT_BYTES:
            raise _RejectedError(
                "too_large", f"{answer.size_bytes} bytes; a node takes at most {MAX_ARTIFACT_BYTES}"
            )
        try:
            digest = bytes.fromhex(answer.sha256)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise _RejectedError("bad_assignment", f"sha256 {answer.sha256!r} is not 64 hex digits")
        try:
            # Cheap and before any download: the fab's announced digest must be signed.
            verify_digest(digest, answer.signature, answer.signing_key_id, keys_dir)
        except SignatureError as exc:
            raise _RejectedError(exc.reason, exc.detail) from None
        try:
            staging = await self._download(answer, key)
        except _RejectedError:
            await self._discard_partial()
            raise
        try:
            runtime, candidate = await self._verify(answer, staging / _ARTIFACT_NAME, keys_dir)
            try:
                await asyncio.to_thread(self._store.activate, candidate, runtime)
            except Exception as exc:  # the store keeps serving the old model on any failure
                raise _RejectedError("activate_failed", f"the swap failed: {exc}") from exc
        finally:
            await self._discard_partial()
        log.info("OTA: now serving %s (sha256 %s)", version, answer.sha256)
        return OtaOutcome(OtaStatus.INSTALLED, self._store.current.version)

    async def _verify(
        self, answer: Any, artifact: Path, keys_dir: Path
    ) -> tuple[ModelRuntime, Path]:
        """Verify, unpack, load and golden-check; returns the candidate and its folder."""
        try:
            await asyncio.to_thread(
                verify_artifact,
                artifact,
                answer.signature,
                answer.signing_key_id,
                keys_dir,
                expected_sha256=answer.sha256,
            )
        except SignatureError as exc:
            raise _RejectedError(exc.reason, exc.detail) from None
        candidate = artifact.parent / _CANDIDATE_NAME
        try:
            await asyncio.to_thread(unpack_artifact, artifact, candidate)
            golden = await asyncio.to_thread(GoldenSet.load, candidate / GOLDEN_FILE)
        except ArtifactError as exc:
            raise _RejectedError("malformed_artifact", str(exc)) from None
        await asyncio.to_thread(artifact.unlink)  # unpacked: free the space before loading
        try:
            runtime = await asyncio.to_thread(
                ModelRuntime.load, candidate, threads=self._settings.runtime_threads
            )
        except ModelLoadError as exc:
            raise _RejectedError("load_failed", str(exc)) from None
        if runtime.version != answer.desired_version:
            raise _RejectedError(
                "version_mismatch",
                f"the artifact holds {runtime.version}, the fab assigned {answer.desired_version}",
            )
        try:
            await asyncio.to_thread(check_golden, runtime, golden, atol=self._golden_atol)
        except GoldenCheckError as exc:
            raise _RejectedError("golden_mismatch", str(exc)) from None
        return runtime, candidate

    async def _download(self, answer: Any, key: tuple[Any, ...]) -> Path:
        """Download the artifact into a staging folder, resuming any earlier partial download.

        Raises:
            _DeferredError: the fab could not deliver it after ``download_attempts`` streams.
            _RejectedError: the fab sends other bytes than it announced.
        """
        if self._partial is not None and self._partial[1].is_dir():
            staging = self._partial[1]  # same assignment: poll_once discarded any other
        else:
            staging = await asyncio.to_thread(self._store.staging_dir)
            self._partial = (key, staging)
        target = staging / _ARTIFACT_NAME
        size = answer.size_bytes
        held = target.stat().st_size if target.exists() else 0
        needed = size - held + size * _UNPACK_FACTOR
        free = (await asyncio.to_thread(shutil.disk_usage, staging)).free
        if free < needed:
            raise _DeferredError(f"{free} bytes free, the update needs about {needed:.0f}")
        with target.open("ab") as out:
            for attempt in range(self._attempts):
                offset = out.tell()
                if offset == size:
                    break
                try:
                    await self._stream(answer, out, offset)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in _RETRYABLE:
                        raise _DeferredError(
                            f"DownloadModel failed: {exc.code().name} {exc.details()}"
                        ) from None
                    log.warning(
                        "OTA: download of %s broke at byte %d of %d (%s); resuming",
                        answer.desired_version,
                        out.tell(),
                        size,
                        exc.code().name,
                    )
                    if attempt + 1 < self._attempts:
                        await asyncio.sleep(self._retry_delay_s * (attempt + 1))
            await asyncio.to_thread(_sync, out)
            if out.tell() != size:
                raise _DeferredError(
                    f"download stopped at byte {out.tell()} of {size} after "
                    f"{self._attempts} attempts; it resumes from there"
                )
        return staging

    async def _stream(self, answer: Any, out: Any, offset: int) -> None:
        """Append one DownloadModel stream from ``offset`` to ``out``."""
        request = fab_pb2.DownloadModelRequest(
            node_id=self._settings.node_id,
            model_version=answer.desired_version,
            artifact_format=ARTIFACT_FORMAT,
            offset=offset,
        )
        async for chunk in self._stub.DownloadModel(request, timeout=STREAM_TIMEOUT_S):
            if chunk.sha256 and chunk.sha256 != answer.sha256:
                raise _RejectedError(
                    "sha256_mismatch",
                    f"the fab streams sha256 {chunk.sha256}, it announced {answer.sha256}",
                )
            if chunk.total_size != answer.size_bytes or chunk.offset != out.tell():
                raise _RejectedError(
                    "bad_download",
                    f"chunk at {chunk.offset} of {chunk.total_size} bytes, expected "
                    f"{out.tell()} of {answer.size_bytes}",
                )
            if out.tell() + len(chunk.data) > answer.size_bytes:
                raise _RejectedError("bad_download", "the fab streams more bytes than announced")
            await asyncio.to_thread(out.write, chunk.data)

    async def _discard_partial(self) -> None:
        if self._partial is not None:
            staging, self._partial = self._partial[1], None
            await asyncio.to_thread(shutil.rmtree, staging, True)


def _assignment_key(answer: Any) -> tuple[Any, ...]:
    """What identifies an assignment: any change of it deserves a fresh attempt."""
    return (
        answer.action,
        answer.desired_version,
        answer.sha256,
        bytes(answer.signature),
        answer.signing_key_id,
    )


def _sync(handle: Any) -> None:
    handle.flush()
    os.fsync(handle.fileno())

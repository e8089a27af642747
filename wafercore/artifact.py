"""The signed model artifact: a tar of one model directory plus its golden set.

The cloud writes it (``cloud.signing.package_model``) and the edge reads it (``edge.ota``); this
module is the one place that knows its layout, so it imports neither tier. An artifact holds
exactly three regular files at its root:

- ``model.onnx`` and ``model.json``: the model directory that `wafercore.runtime` loads;
- ``golden.npz``: fixed wafers (``tokens``) and what the model answered for them when it was
  packaged (``probabilities``, ``prediction``, and ``novelty`` scores when it has a novelty
  model), so a node can prove that the graphs it loaded behave as the ones that were evaluated
  before it serves a single wafer.

and, together or not at all, the novelty model beside the classifier (``novelty.onnx`` and
``novelty.json``, `wafercore.novelty`).

Unpacking trusts nothing in the tar, even after the signature has verified: a signing key can
leak, and a parser bug must not become a write outside the staging folder.
"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from wafercore.classes import NUM_CLASSES
from wafercore.encoding import GRID, TOKENS
from wafercore.novelty import NOVELTY_FILE, NOVELTY_MANIFEST_FILE, NoveltyRuntime
from wafercore.runtime import MANIFEST_FILE, MODEL_FILE, RuntimeResult

GOLDEN_FILE = "golden.npz"
"""Name of the golden set inside an artifact."""
MEMBERS = (MODEL_FILE, MANIFEST_FILE, GOLDEN_FILE)
"""The members every artifact has, in the order they are written."""
OPTIONAL_MEMBERS = (NOVELTY_FILE, NOVELTY_MANIFEST_FILE)
"""The novelty model's members: an artifact has both or neither, written after `MEMBERS`."""
SIGNATURE_SUFFIX = ".sig"
"""The detached signature of ``FILE`` is ``FILE.sig`` (64 raw bytes)."""
MAX_MEMBER_BYTES: Mapping[str, int] = {
    MODEL_FILE: 1 << 30,
    MANIFEST_FILE: 1 << 20,
    GOLDEN_FILE: 64 << 20,
    NOVELTY_FILE: 256 << 20,
    NOVELTY_MANIFEST_FILE: 1 << 20,
}
"""Largest size of each member: far above a real model, far below a full disk."""
MAX_ARTIFACT_BYTES = sum(MAX_MEMBER_BYTES.values()) + (1 << 20)
"""Largest artifact a node downloads (members plus tar headers)."""
GOLDEN_ATOL = 1e-4
"""Largest absolute difference allowed between expected and observed golden probabilities."""
MAX_GOLDEN = 100_000
"""Most wafers a golden set may hold (bounds the time a node spends checking one)."""

_COPY_BUFFER = 1 << 20
# Fixed zip timestamp, so packaging the same model twice writes the same bytes.
_EPOCH = (1980, 1, 1, 0, 0, 0)


class ArtifactError(ValueError):
    """An artifact that is malformed or unsafe to unpack; the message says which member and why."""


class GoldenCheckError(ValueError):
    """A loaded model does not reproduce its golden set; the message says how far it is off."""


@dataclass(frozen=True)
class GoldenSet:
    """Fixed wafers and the outputs the model gave for them when it was packaged.

    Attributes:
        tokens: (N, 676) uint8 canonical tokens.
        probabilities: (N, classes) float32 expected class probabilities.
        prediction: (N,) int64 expected class ids.
        novelty: (N,) float32 expected novelty scores, when the model has a novelty model.
    """

    tokens: npt.NDArray[np.uint8]
    probabilities: npt.NDArray[np.float32]
    prediction: npt.NDArray[np.int64]
    novelty: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        n = self.tokens.shape[0] if self.tokens.ndim == 2 else -1
        problems = []
        if not 1 <= n <= MAX_GOLDEN or self.tokens.shape != (n, TOKENS):
            problems.append(f"tokens shape {self.tokens.shape} is not (1..{MAX_GOLDEN}, {TOKENS})")
        elif self.tokens.dtype != np.uint8 or int(self.tokens.max()) > 2:
            problems.append("tokens must be uint8 values 0, 1 or 2")
        if self.probabilities.shape != (n, NUM_CLASSES) or self.probabilities.dtype != np.float32:
            problems.append(
                f"probabilities must be float32 ({n}, {NUM_CLASSES}), "
                f"got {self.probabilities.dtype} {self.probabilities.shape}"
            )
        if self.prediction.shape != (n,) or self.prediction.dtype != np.int64:
            problems.append(
                f"prediction must be int64 ({n},), "
                f"got {self.prediction.dtype} {self.prediction.shape}"
            )
        if self.novelty is not None and (
            self.novelty.shape != (n,) or self.novelty.dtype != np.float32
        ):
            problems.append(
                f"novelty must be float32 ({n},), got {self.novelty.dtype} {self.novelty.shape}"
            )
        if problems:
            raise ArtifactError(f"{GOLDEN_FILE}: " + "; ".join(problems))

    def maps(self) -> list[npt.NDArray[np.uint8]]:
        """The golden wafers as (26, 26) canonical maps."""
        return list(self.tokens.reshape(-1, GRID, GRID))

    @classmethod
    def from_result(
        cls,
        tokens: npt.NDArray[np.uint8],
        result: RuntimeResult,
        novelty: npt.NDArray[np.float32] | None = None,
    ) -> GoldenSet:
        """The golden set of ``tokens`` from a runtime's answer (and novelty scores) for them."""
        return cls(
            tokens=np.ascontiguousarray(tokens, dtype=np.uint8),
            probabilities=np.ascontiguousarray(result.probabilities, dtype=np.float32),
            prediction=np.ascontiguousarray(result.prediction, dtype=np.int64),
            novelty=None if novelty is None else np.ascontiguousarray(novelty, dtype=np.float32),
        )

    def _arrays(self) -> list[str]:
        return ["tokens", "probabilities", "prediction"] + (
            [] if self.novelty is None else ["novelty"]
        )

    def to_bytes(self) -> bytes:
        """The set as ``golden.npz`` bytes (uncompressed, fixed timestamps: reproducible)."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            for name in self._arrays():
                member = io.BytesIO()
                np.lib.format.write_array(member, getattr(self, name), allow_pickle=False)
                archive.writestr(
                    zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH), member.getvalue()
                )
        return buffer.getvalue()

    @classmethod
    def load(cls, path: Path) -> GoldenSet:
        """Read ``golden.npz``.

        Raises:
            ArtifactError: not an npz of the three arrays with the expected shapes and types.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = sorted({"tokens", "probabilities", "prediction"} - set(data.files))
                if missing:
                    raise ArtifactError(f"{GOLDEN_FILE} lacks arrays {missing}")
                return cls(
                    tokens=data["tokens"],
                    probabilities=data["probabilities"],
                    prediction=data["prediction"],
                    novelty=data["novelty"] if "novelty" in data.files else None,
                )
        except ArtifactError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise ArtifactError(f"{GOLDEN_FILE} is not a readable npz: {exc}") from None


class _Predictor(Protocol):
    novelty: NoveltyRuntime | None

    def prepare(self, maps: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[Any]: ...

    def predict(self, inputs: npt.ArrayLike) -> RuntimeResult: ...


def check_golden(runtime: _Predictor, golden: GoldenSet, *, atol: float = GOLDEN_ATOL) -> None:
    """Check that a loaded model reproduces its golden set.

    Probabilities must be within ``atol`` of the expected ones and predictions equal. A
    prediction may differ only where the expected top two probabilities are themselves within
    ``2 * atol`` (a tie that float rounding on another CPU can break either way); the
    probability check still holds those wafers to ``atol``.

    Args:
        runtime: the candidate model (a `wafercore.runtime.ModelRuntime`).
        golden: the artifact's golden set.
        atol: largest absolute difference allowed per probability.

    Raises:
        GoldenCheckError: the outputs differ, with how many wafers and by how much.
    """
    # The golden wafers are 26x26 canonical maps: each model builds its own input from them, as
    # it does from a station's map, so the check covers the node's preprocessing too.
    result = runtime.predict(runtime.prepare(golden.maps()))
    observed = np.asarray(result.probabilities, dtype=np.float32)
    if observed.shape != golden.probabilities.shape:
        raise GoldenCheckError(
            f"the model returns probabilities of shape {observed.shape}, "
            f"the golden set expects {golden.probabilities.shape}"
        )
    error = np.abs(observed.astype(np.float64) - golden.probabilities.astype(np.float64))
    off = error.max(axis=1) > atol
    top2 = np.sort(golden.probabilities, axis=1)[:, -2:]
    tie = (top2[:, 1] - top2[:, 0]) <= 2 * atol
    flipped = (np.asarray(result.prediction) != golden.prediction) & ~tie
    if off.any() or flipped.any():
        raise GoldenCheckError(
            f"{int(off.sum())} of {len(off)} golden wafers have probabilities off by more than "
            f"{atol:g} (largest difference {float(error.max()):.3g}) and {int(flipped.sum())} "
            "have a different prediction"
        )
    _check_golden_novelty(runtime.novelty, golden, atol)


def _check_golden_novelty(model: NoveltyRuntime | None, golden: GoldenSet, atol: float) -> None:
    """The novelty model reproduces the golden scores; both are there, or neither."""
    if (model is None) != (golden.novelty is None):
        has = "has" if model is not None else "has no"
        raise GoldenCheckError(f"the model {has} novelty model, its golden set says otherwise")
    if model is None or golden.novelty is None:
        return
    observed = model.score(model.prepare(golden.maps())).score.astype(np.float64)
    error = np.abs(observed - golden.novelty.astype(np.float64))
    if float(error.max()) > atol:
        raise GoldenCheckError(
            f"{int((error > atol).sum())} of {len(error)} golden wafers have novelty scores off "
            f"by more than {atol:g} (largest difference {float(error.max()):.3g})"
        )


def write_artifact(out: Path, members: Mapping[str, bytes | Path]) -> None:
    """Write an artifact tar with the `MEMBERS` (and both `OPTIONAL_MEMBERS` or neither),
    reproducibly (fixed owner, mode, time).

    Args:
        out: the tar file to write (replaced if it exists).
        members: each member's bytes, or the file to copy them from.

    Raises:
        ArtifactError: a member is missing, unknown or too large.
    """
    _check_names(list(members))
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as archive:
        for name in (*MEMBERS, *OPTIONAL_MEMBERS):
            if name not in members:
                continue
            source = members[name]
            data = source if isinstance(source, bytes) else Path(source).read_bytes()
            if len(data) > MAX_MEMBER_BYTES[name]:
                raise ArtifactError(
                    f"{name} has {len(data)} bytes; at most {MAX_MEMBER_BYTES[name]}"
                )
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            archive.addfile(info, io.BytesIO(data))


def unpack_artifact(artifact: Path, dest: Path) -> Path:
    """Unpack an artifact's members into ``dest`` (created; must not exist yet), safely.

    Every member must be a regular file named exactly as one of `MEMBERS`, each at most once and
    within its size limit; absolute names, ``..``, folders, links and devices are refused before
    any byte is written.

    Args:
        artifact: the (verified) tar file.
        dest: the folder to create and fill.

    Returns:
        ``dest``, now a model directory with ``golden.npz`` beside the model.

    Raises:
        ArtifactError: not a tar, or a member that is unsafe, unknown, repeated, too large or
            missing.
    """
    try:
        with tarfile.open(artifact, "r:") as archive:  # uncompressed only: no decompression bomb
            infos = archive.getmembers()
            _check_members(infos)
            dest.mkdir(parents=False, exist_ok=False)
            for info in infos:
                _extract(archive, info, dest / info.name)
    except tarfile.TarError as exc:
        raise ArtifactError(f"{artifact.name} is not a valid tar: {exc}") from None
    return dest


def _check_members(infos: list[tarfile.TarInfo]) -> None:
    for info in infos:
        _check_member(info)
    _check_names([info.name for info in infos])


def _check_names(names: list[str]) -> None:
    unknown = sorted(set(names) - set(MAX_MEMBER_BYTES))
    if unknown:
        raise ArtifactError(f"members {unknown} are not among {list(MAX_MEMBER_BYTES)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ArtifactError(f"members {repeated} appear more than once")
    missing = [name for name in MEMBERS if name not in names]
    if missing:
        raise ArtifactError(f"members {missing} are missing")
    optional = [name for name in OPTIONAL_MEMBERS if name in names]
    if optional and len(optional) != len(OPTIONAL_MEMBERS):
        raise ArtifactError(f"members {list(OPTIONAL_MEMBERS)} come together, got only {optional}")


def _check_member(info: tarfile.TarInfo) -> None:
    name = info.name
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")):
        raise ArtifactError(f"member {name!r} has an absolute path")
    if ".." in path.parts or "\\" in name:
        raise ArtifactError(f"member {name!r} leaves the artifact's folder")
    if info.issym() or info.islnk():
        raise ArtifactError(f"member {name!r} is a link")
    if not info.isreg():
        raise ArtifactError(f"member {name!r} is not a regular file")
    if name not in MAX_MEMBER_BYTES:
        raise ArtifactError(f"member {name!r} is not one of {list(MAX_MEMBER_BYTES)}")
    if info.size > MAX_MEMBER_BYTES[name]:
        raise ArtifactError(
            f"member {name!r} has {info.size} bytes; at most {MAX_MEMBER_BYTES[name]}"
        )


def _extract(archive: tarfile.TarFile, info: tarfile.TarInfo, target: Path) -> None:
    source = archive.extractfile(info)
    if source is None:  # only for non-regular members, refused above
        raise ArtifactError(f"member {info.name!r} has no data")
    written = 0
    # O_EXCL: never follow or replace something already at the target.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with source, os.fdopen(fd, "wb") as out:
        while block := source.read(_COPY_BUFFER):
            written += len(block)
            if written > info.size:
                raise ArtifactError(f"member {info.name!r} holds more bytes than its header says")
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    if written != info.size:
        raise ArtifactError(f"member {info.name!r} is truncated ({written} of {info.size} bytes)")

"""The models an edge node keeps: the one it serves, the previous one, and where OTA unpacks.

Layout under ``root`` (``settings.models_root``)::

    current.json          {"current": <dir>, "previous": <dir or null>}, replaced atomically
    <version>-<id>/       installed models (model.onnx, model.json, ...), at most two
    staging/<id>/         downloads being unpacked and verified; cleared at start

Directories inside ``root`` are written relative to it, others (the default model, which
ships with the node and is never deleted) as absolute paths. A node with no ``current.json``
serves ``default_model``.

Swaps are a reference assignment: a request reads `ModelStore.current` once and finishes on that
`LoadedModel`, whatever is activated meanwhile. The ONNX graph is in memory once loaded, so
deleting a replaced model's directory does not disturb requests still using it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wafercore.encoding import FAIL, GRID, OUT, PASS
from wafercore.runtime import MANIFEST_FILE, ModelLoadError, ModelManifest, ModelRuntime

log = logging.getLogger(__name__)

POINTER_FILE = "current.json"
"""Name of the file that says which model is current."""
STAGING_DIR = "staging"
"""Folder under the root for downloads being verified."""


class NoPreviousModel(Exception):  # noqa: N818 (named for the condition it reports)
    """A rollback was asked for but there is no usable previous model."""


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to serve.

    Attributes:
        runtime: the loaded, warmed-up ONNX Runtime session.
        version: ``trm-v1.0.0``.
        path: the directory it was loaded from.
    """

    runtime: ModelRuntime
    version: str
    path: Path


def warm_up(runtime: ModelRuntime, predictions: int) -> None:
    """Run ``predictions`` dummy single-wafer predictions through every supervision step.

    The first calls of a fresh ONNX Runtime session allocate and tune; doing them here keeps
    them out of the first real requests.
    """
    patterns = (PASS, FAIL, OUT)
    for i in range(predictions):
        wafer = np.full((GRID, GRID), patterns[i % len(patterns)], dtype=np.uint8)
        # A halt threshold above 1 never halts: every step's kernels run once; prepare too.
        runtime.predict(runtime.prepare([wafer]), halt_threshold=2.0)


class ModelStore:
    """The current and previous model of a node, persisted under ``root``.

    Args:
        root: folder of installed models and the pointer file.
        default_model: model directory served when nothing was installed (or nothing
            installed can be loaded).
        threads: ONNX Runtime threads per model.
        warmup: dummy predictions run on every model before it serves.

    Raises:
        ModelLoadError: neither the persisted current model, nor the previous one, nor the
            default model can be loaded.
    """

    def __init__(self, root: Path, *, default_model: Path, threads: int, warmup: int = 3) -> None:
        self._root = Path(root).resolve()
        self._default = Path(default_model).resolve()
        self._threads = threads
        self._warmup = warmup
        self._lock = threading.Lock()
        self._root.mkdir(parents=True, exist_ok=True)
        # Leftovers of a download interrupted by a restart: never activated, safe to drop.
        shutil.rmtree(self._root / STAGING_DIR, ignore_errors=True)
        current_path, previous_path = self._read_pointer()
        # Folders the pointer does not name are from an activation cut short: never served.
        self._prune(keep={current_path, previous_path})
        self._current = self._load_first(current_path, previous_path)
        if previous_path == self._current.path:
            previous_path = None  # the current one failed and the previous took its place
        self._previous: LoadedModel | None = None
        self._previous_path: Path | None = None
        self._previous_version: str | None = None
        if previous_path is not None:
            version = _manifest_version(previous_path)
            if version is None:
                log.warning("previous model %s is unreadable: rollback unavailable", previous_path)
            else:
                self._previous_path, self._previous_version = previous_path, version
        log.info("serving model %s from %s", self._current.version, self._current.path)

    @property
    def current(self) -> LoadedModel:
        """The model new requests use (read once per request)."""
        return self._current

    @property
    def previous_version(self) -> str | None:
        """Version a rollback would serve, or None."""
        return self._previous_version

    @property
    def root(self) -> Path:
        """The store's folder."""
        return self._root

    def staging_dir(self) -> Path:
        """A fresh, empty folder under the root (same file system) to download and unpack into."""
        path = self._root / STAGING_DIR / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    def activate(self, candidate_dir: Path, runtime: ModelRuntime) -> None:
        """Make a verified model current; the current one becomes the previous.

        Args:
            candidate_dir: the unpacked model (usually a `staging_dir`); moved into the store.
            runtime: the candidate already loaded from ``candidate_dir`` (and checked by the
                caller); it is warmed up before it takes traffic.

        Raises:
            ValueError: ``candidate_dir``'s manifest is not the version ``runtime`` serves.
            OSError: the candidate cannot be moved or the pointer written; the current model
                is then unchanged.
        """
        candidate_dir = Path(candidate_dir)
        if _manifest_version(candidate_dir) != runtime.version:
            raise ValueError(f"{candidate_dir} does not hold model {runtime.version}")
        warm_up(runtime, self._warmup)
        with self._lock:
            target = self._root / f"{runtime.version}-{uuid.uuid4().hex[:8]}"
            shutil.move(candidate_dir, target)
            old = self._current
            self._write_pointer(target, old.path)
            self._current = LoadedModel(runtime=runtime, version=runtime.version, path=target)
            self._previous = old
            self._previous_path, self._previous_version = old.path, old.version
            self._prune(keep={target, old.path})
        log.info("activated model %s (previous %s)", runtime.version, old.version)

    def rollback(self) -> str:
        """Serve the previous model again and forget the current one.

        The replaced model is deleted (when it lives in the store): it was rolled back for a
        reason, and a second rollback must not bring it back. ``previous_version`` is None
        afterwards until the next `activate`.

        Returns:
            The version now served.

        Raises:
            NoPreviousModel: nothing to roll back to, or the previous model cannot be loaded.
            OSError: the pointer cannot be written; the current model is then unchanged.
        """
        with self._lock:
            if self._previous_path is None:
                raise NoPreviousModel(f"model {self._current.version} has no previous model")
            previous = self._previous
            if previous is None:
                try:
                    previous = self._load(self._previous_path)
                except ModelLoadError as exc:
                    raise NoPreviousModel(f"previous model cannot be loaded: {exc}") from exc
            bad = self._current
            self._write_pointer(previous.path, None)
            self._current = previous
            self._previous = self._previous_path = self._previous_version = None
            self._prune(keep={previous.path})
        log.warning("rolled back from model %s to %s", bad.version, previous.version)
        return previous.version

    def _load(self, path: Path) -> LoadedModel:
        runtime = ModelRuntime.load(path, threads=self._threads)
        warm_up(runtime, self._warmup)
        return LoadedModel(runtime=runtime, version=runtime.version, path=path)

    def _load_first(self, current: Path | None, previous: Path | None) -> LoadedModel:
        """The first of current, previous, default that loads (a node must serve something)."""
        candidates = [p for p in (current, previous) if p is not None] + [self._default]
        problems = []
        for path in candidates:
            try:
                return self._load(path)
            except ModelLoadError as exc:
                log.error("model %s cannot be served: %s", path, exc)
                problems.append(str(exc))
        raise ModelLoadError("no model can be served: " + "; ".join(problems))

    def _read_pointer(self) -> tuple[Path | None, Path | None]:
        pointer = self._root / POINTER_FILE
        if not pointer.exists():
            return None, None
        try:
            data = json.loads(pointer.read_text(encoding="utf-8"))
            current, previous = data["current"], data["previous"]
            if not isinstance(current, str) or not isinstance(previous, str | None):
                raise TypeError("current must be a string, previous a string or null")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("%s is unreadable (%s): serving the default model", pointer, exc)
            return None, None
        return self._resolve(current), None if previous is None else self._resolve(previous)

    def _write_pointer(self, current: Path, previous: Path | None) -> None:
        data = {"current": self._relative(current), "previous": None}
        if previous is not None:
            data["previous"] = self._relative(previous)
        tmp = self._root / f".{POINTER_FILE}.{uuid.uuid4().hex}"
        with tmp.open("w", encoding="utf-8") as out:
            json.dump(data, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self._root / POINTER_FILE)
        # The rename itself is durable only once the directory is synced.
        fd = os.open(self._root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _relative(self, path: Path) -> str:
        return str(path.relative_to(self._root)) if path.parent == self._root else str(path)

    def _resolve(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self._root / path

    def _prune(self, *, keep: set[Path | None]) -> None:
        """Delete the installed models not in ``keep`` (never anything outside the root)."""
        for entry in self._root.iterdir():
            if entry.is_dir() and entry.name != STAGING_DIR and entry not in keep:
                shutil.rmtree(entry, ignore_errors=True)


def _manifest_version(model_dir: Path) -> str | None:
    """Version in a model directory's manifest, or None when it cannot be read."""
    try:
        text = (model_dir / MANIFEST_FILE).read_text(encoding="utf-8")
        return ModelManifest.from_json(text).version
    except (OSError, ValueError):
        return None

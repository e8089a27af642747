"""Self-training on the production stream: a teacher labels the unlabelled maps once, offline.

`wafer-cloud pseudo-label` runs a trained model (the teacher) over the unlabelled maps the way a
node serves it (its own input, the second look on doubtful wafers, here with a higher bar so
more of the stream gets the eight-view average), keeps the maps it is confident about, and
writes their rows, classes and confidences to a small ``.npz`` beside the unlabelled file's
sha256 and the teacher's version. A training config's ``pseudo`` section then adds those maps,
with the teacher's classes as labels, to the student's training maps.

Selection is class-balanced: a map is kept when its confidence reaches ``threshold``, and each
class keeps at most ``max_per_class`` maps, its most confident ones, so the stream's None
majority (about 90% of production) cannot drown the defect classes the student needs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cloud.evaluation.evaluate import CHUNK
from wafercore.classes import NUM_CLASSES
from wafercore.dataset import WaferDataset
from wafercore.readers.npz import file_sha256, read_npz
from wafercore.runtime import ModelRuntime
from wafercore.second_look import second_look

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PseudoLabels:
    """Rows of an unlabelled file with the teacher's class and confidence.

    Attributes:
        index: int64 (N,), rows of the unlabelled file, ascending.
        label: int64 (N,), the teacher's class of each row.
        confidence: float32 (N,), the teacher's probability of that class.
        source_sha256: the unlabelled file's sha256 (the rows mean nothing in another file).
        teacher: the teacher model's version.
    """

    index: npt.NDArray[np.int64]
    label: npt.NDArray[np.int64]
    confidence: npt.NDArray[np.float32]
    source_sha256: str
    teacher: str

    def __post_init__(self) -> None:
        if not len(self.index) == len(self.label) == len(self.confidence):
            raise ValueError("index, label and confidence must have one entry per map")
        if len(self.label) and not (0 <= self.label.min() and self.label.max() < NUM_CLASSES):
            raise ValueError(f"label must be a class id in 0..{NUM_CLASSES - 1}")

    def class_counts(self) -> list[int]:
        """Maps kept per class id."""
        return np.bincount(self.label, minlength=NUM_CLASSES).tolist()

    def save(self, path: Path) -> Path:
        """Write to ``path`` (``.npz``), atomically."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            index=self.index,
            label=self.label,
            confidence=self.confidence,
            source_sha256=np.array(self.source_sha256),
            teacher=np.array(self.teacher),
        )
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> PseudoLabels:
        """Read a file `save` wrote.

        Raises:
            ValueError: the file lacks a field or holds an impossible one.
        """
        with np.load(path) as f:
            missing = {"index", "label", "confidence", "source_sha256", "teacher"} - set(f.files)
            if missing:
                raise ValueError(f"{path} is not a pseudo-label file: no {sorted(missing)}")
            return cls(
                index=f["index"].astype(np.int64),
                label=f["label"].astype(np.int64),
                confidence=f["confidence"].astype(np.float32),
                source_sha256=str(f["source_sha256"]),
                teacher=str(f["teacher"]),
            )

    def kept(self, *, threshold: float, max_per_class: int | None) -> PseudoLabels:
        """The rows `select_balanced` keeps (a stricter choice than the file's own)."""
        rows = select_balanced(
            self.label, self.confidence, threshold=threshold, max_per_class=max_per_class
        )
        return replace(
            self, index=self.index[rows], label=self.label[rows], confidence=self.confidence[rows]
        )

    def dataset(self, unlabelled: WaferDataset, unlabelled_sha256: str) -> WaferDataset:
        """The kept maps of ``unlabelled``, labelled with the teacher's classes.

        Raises:
            ValueError: ``unlabelled`` is not the file these rows were chosen from.
        """
        if unlabelled_sha256 != self.source_sha256:
            raise ValueError(
                f"pseudo-labels were made on a file with sha256 {self.source_sha256[:12]}, "
                f"not on {unlabelled.source or 'this file'} ({unlabelled_sha256[:12]})"
            )
        if len(self.index) and self.index.max() >= len(unlabelled):
            raise ValueError(f"pseudo-label row {self.index.max()} is past the file's end")
        kept = unlabelled.subset(self.index)
        kept.labels = self.label.copy()
        return kept


def teacher_predictions(
    runtime: ModelRuntime,
    dataset: WaferDataset,
    *,
    look_below: float,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The teacher's class and confidence for every map of ``dataset``.

    Each map goes through the teacher's own input; a map whose first-pass confidence is below
    ``look_below`` gets the second look (its views averaged, as many as the teacher's manifest
    says), a better label for the maps that matter most.
    """
    n = len(dataset)
    label = np.empty(n, np.int64)
    confidence = np.empty(n, np.float32)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        inputs = runtime.prepare([dataset.map(i) for i in range(start, stop)])
        looked = second_look(runtime, inputs, runtime.predict(inputs), threshold=look_below)
        label[start:stop] = looked.result.prediction
        confidence[start:stop] = looked.result.confidence
        if progress is not None:
            progress(stop, n)
    return label, confidence


def select_balanced(
    label: npt.NDArray[np.int64],
    confidence: npt.NDArray[np.float32],
    *,
    threshold: float,
    max_per_class: int | None,
) -> npt.NDArray[np.int64]:
    """Rows (ascending) whose confidence reaches ``threshold``, at most ``max_per_class`` of
    each class: its most confident ones (ties broken by row, so the choice is reproducible)."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"max_per_class must be at least 1, got {max_per_class}")
    kept = []
    for cls in range(NUM_CLASSES):
        rows = np.flatnonzero((label == cls) & (confidence >= threshold))
        if max_per_class is not None and len(rows) > max_per_class:
            order = np.lexsort((rows, -confidence[rows]))  # most confident first, then by row
            rows = rows[order[:max_per_class]]
        kept.append(rows)
    return np.sort(np.concatenate(kept)).astype(np.int64)


def pseudo_label(
    model_dir: Path,
    unlabelled_path: Path,
    *,
    threshold: float,
    max_per_class: int | None,
    look_below: float,
    threads: int | None = None,
) -> PseudoLabels:
    """Label ``unlabelled_path`` with the model of ``model_dir`` and keep the confident maps."""
    runtime = ModelRuntime.load(model_dir, threads=threads)
    dataset = read_npz(unlabelled_path)

    def progress(done: int, total: int) -> None:
        if done == total or done % (CHUNK * 16) < CHUNK:
            log.info("teacher %s: %d/%d maps", runtime.version, done, total)

    label, confidence = teacher_predictions(
        runtime, dataset, look_below=look_below, progress=progress
    )
    every = PseudoLabels(
        index=np.arange(len(dataset), dtype=np.int64),
        label=label,
        confidence=confidence,
        source_sha256=file_sha256(unlabelled_path),
        teacher=runtime.version,
    )
    return every.kept(threshold=threshold, max_per_class=max_per_class)

"""Semi-supervised training on the unlabelled production stream: FixMatch with FlexMatch's
class-balanced thresholds.

For a batch of unlabelled maps, the EMA model (the teacher, in eval mode) predicts a weakly
augmented view (a rotation or mirror image, light noise); where its confidence passes the
threshold of the predicted class, the student learns that class on a strongly augmented view
(`wafercore.augmentation.strong_augment`). Each class's threshold is the base threshold scaled
by how often the teacher is already confident about that class over the stream (FlexMatch's
learning effect), so classes it rarely predicts get pseudo-labels too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import Tensor, nn

from cloud.training.config import SemiConfig
from wafercore.augmentation import augment, strong_augment
from wafercore.classes import NUM_CLASSES
from wafercore.dataset import WaferDataset
from wafercore.model_input import InputSpec, build_input

log = logging.getLogger(__name__)

UNSEEN = -1
"""Learning status of an unlabelled map the teacher has not been confident about yet."""


class FlexThresholds:
    """Per-class confidence thresholds from the teacher's confident predictions so far.

    ``status[i]`` is the class the teacher last predicted for unlabelled map ``i`` with a
    confidence above the base threshold (`UNSEEN` otherwise). A class's learning effect is its
    count over the largest count, and its threshold ``base * effect / (2 - effect)``, never
    below ``floor``: a class the teacher is sure of keeps the base threshold, one it has rarely
    been sure of gets a lower bar. Before any confident prediction every class has the base.

    FlexMatch's warm-up (dividing by the unseen maps while they are the majority) is left out
    on purpose: with 637k unlabelled maps and ~50k drawn per epoch they stay the majority for
    the whole run, every threshold stays near 0, and every pseudo-label is taken (measured: a
    mask rate of 1.0 and validation macro-F1 0.755 against 0.866 without the stream).
    """

    def __init__(self, size: int, base: float, *, flex: bool = True, floor: float = 0.7) -> None:
        self.base = base
        self.flex = flex
        self.floor = min(floor, base)
        self.status = np.full(size, UNSEEN, dtype=np.int8)

    def per_class(self) -> npt.NDArray[np.float64]:
        """The current threshold of every class."""
        counts = np.bincount(self.status[self.status != UNSEEN], minlength=NUM_CLASSES)
        if not self.flex or counts.max() == 0:
            return np.full(NUM_CLASSES, self.base)
        effect = counts / counts.max()
        return np.maximum(self.floor, self.base * effect / (2.0 - effect))

    def update(
        self, idx: npt.NDArray[np.int64], pseudo: npt.NDArray[np.int64], confidence: np.ndarray
    ) -> None:
        """Record the teacher's confident predictions for the maps ``idx``."""
        sure = confidence > self.base
        self.status[idx[sure]] = pseudo[sure]


@dataclass(frozen=True)
class SemiStats:
    """What one unlabelled batch did."""

    loss: float
    mask_rate: float  # share of the batch that got a pseudo-label


class UnlabelledStream:
    """Weak and strong views of random unlabelled maps, in the model's declared input.

    Args:
        raw: the unlabelled maps.
        config: the semi-supervised settings.
        spec: the model's input.
        batch: labelled maps per step (the stream draws ``ratio`` times as many).
        share: (indexes, pseudo-labels, confidences) of this process's batch -> those of every
            training process's, so the thresholds stay the same on every rank; none alone.
    """

    def __init__(
        self,
        raw: WaferDataset,
        config: SemiConfig,
        spec: InputSpec,
        batch: int,
        *,
        share: Callable[..., tuple[npt.NDArray[Any], ...]] | None = None,
    ) -> None:
        self.raw = raw
        self.config = config
        self.spec = spec
        self.size = config.ratio * batch
        self.share = share
        self.thresholds = FlexThresholds(
            len(raw), config.threshold, flex=config.flex, floor=config.min_threshold
        )

    def views(
        self, rng: np.random.Generator
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any], npt.NDArray[Any]]:
        """(indexes, weak views, strong views) of one batch of unlabelled maps."""
        idx = rng.integers(0, len(self.raw), size=self.size)
        maps = [self.raw.map(int(i)) for i in idx]
        weak = build_input([augment(m, rng) for m in maps], self.spec)
        strong = build_input([strong_augment(m, rng) for m in maps], self.spec)
        return idx, weak, strong

    def loss(
        self,
        student_logits: Callable[[Tensor], list[Tensor]],
        teacher: nn.Module,
        teacher_logits: Callable[[nn.Module, Tensor], Tensor],
        rng: np.random.Generator,
        to_tensor: Callable[[np.ndarray], Tensor],
    ) -> tuple[Tensor, SemiStats]:
        """The consistency loss of one unlabelled batch (mean over the batch, masked).

        Args:
            student_logits: the model being trained: input -> logits of every supervision step.
            teacher: the EMA model (run in eval mode, without gradient).
            teacher_logits: (teacher, input) -> its final logits.
            rng: this step's random stream.
            to_tensor: a batch of model inputs as a tensor on the training device.
        """
        idx, weak, strong = self.views(rng)
        with torch.no_grad():
            teacher.eval()
            probs = torch.softmax(teacher_logits(teacher, to_tensor(weak)).float(), dim=-1)
        confidence, pseudo = probs.max(dim=-1)
        conf_np, pseudo_np = confidence.cpu().numpy(), pseudo.cpu().numpy()
        if self.share is not None:
            idx, pseudo_np, conf_np = self.share(idx, pseudo_np, conf_np)
        self.thresholds.update(idx, pseudo_np, conf_np)
        bar = torch.as_tensor(self.thresholds.per_class(), device=probs.device)
        mask = (confidence >= bar[pseudo]).float()  # (U,)
        steps = student_logits(to_tensor(strong))
        per_wafer = torch.stack(
            [F.cross_entropy(s.float(), pseudo, reduction="none") for s in steps]
        ).mean(dim=0)  # (U,): deep supervision on the pseudo-label, every step alike
        loss = (per_wafer * mask).mean()
        return loss, SemiStats(loss=float(loss.item()), mask_rate=float(mask.mean().item()))

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps to resume exactly."""
        return {"status": self.thresholds.status.copy()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore `state`."""
        self.thresholds.status = np.asarray(state["status"], dtype=np.int8).copy()

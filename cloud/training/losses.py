"""Deep-supervision loss: cross-entropy at every supervision step plus the halting BCE."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor


@dataclass
class LossParts:
    """The summed loss and what it is made of, for logging."""

    total: Tensor
    ce: float
    halt: float
    step_accuracy: list[float]


def deep_supervision_loss(
    logits: list[Tensor],
    halt_logits: list[Tensor] | None,
    targets: Tensor,
    *,
    class_weight: Tensor | None = None,
    logit_bias: Tensor | None = None,
    halt_lambda: float = 0.5,
    label_smoothing: float = 0.0,
) -> LossParts:
    """Mean over supervision steps of CE + λ·BCE(halt, "this step's answer is right").

    Args:
        logits: per step, (B, C).
        halt_logits: per step, (B,); None for single-pass models (no halting head).
        targets: (B,) class ids.
        class_weight: (C,) cross-entropy weights (inverse frequency, effective number).
        logit_bias: (C,) added to the logits in training only (logit adjustment: τ·log prior),
            so the trained logits come out prior-free.
        halt_lambda: weight of the halting loss.
        label_smoothing: cross-entropy label smoothing.
    """
    ce_total = torch.zeros((), device=targets.device)
    halt_total = torch.zeros((), device=targets.device)
    accuracy = []
    for i, step_logits in enumerate(logits):
        adjusted = step_logits if logit_bias is None else step_logits + logit_bias
        ce_total = ce_total + F.cross_entropy(
            adjusted, targets, weight=class_weight, label_smoothing=label_smoothing
        )
        correct = (step_logits.argmax(-1) == targets).float()  # no gradient: a target
        accuracy.append(float(correct.mean()))
        if halt_logits is not None:
            halt_total = halt_total + F.binary_cross_entropy_with_logits(halt_logits[i], correct)
    steps = len(logits)
    total = (ce_total + halt_lambda * halt_total) / steps
    return LossParts(
        total=total,
        ce=float(ce_total.detach()) / steps,
        halt=float(halt_total.detach()) / steps,
        step_accuracy=accuracy,
    )

"""A convolutional VAE of known wafer patterns: what it cannot reconstruct is novel (issue 14).

It reads the area input of the classifier (`wafercore.model_input`: channel 0 the fail fraction
of each cell, channel 1 the fraction of the cell inside the wafer) and reconstructs the fail
channel. The likelihood is Bernoulli over the die inside the wafer: each cell's binary
cross-entropy is weighted by its die fraction, so cells outside the wafer never count and a
cell half inside counts half (`vae_loss`, summed over the wafer's die). ``beta`` weights the
KL term (the VAE brief argues for beta < 1: a sharper reconstruction, a more sensitive score).

The novelty score of a wafer is its reconstruction error (mean weighted cross-entropy per die
of the posterior mean's reconstruction), and the per-cell error is its heatmap (`novelty`).
`VAEScorer` is the deterministic graph that export writes: maps in, score, heatmap and the
latent mean out. Shapes: B batch, S the input's side, Z the latent size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import Tensor, nn

FAIL, DIE = 0, 1
"""Channels of the area input the VAE reads (`wafercore.model_input.CHANNELS` order)."""


@dataclass(frozen=True)
class VAEConfig:
    """Architecture and loss weight of the VAE. Stored with every checkpoint and export."""

    size: int = 64
    channels: tuple[int, ...] = (32, 64, 128)
    latent: int = 32
    beta: float = 0.5

    def __post_init__(self) -> None:
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be positive ints, got {self.channels}")
        if self.size % 2 ** len(self.channels):
            raise ValueError(
                f"size {self.size} must be divisible by 2**{len(self.channels)} (one halving "
                "per block)"
            )
        if self.latent < 1:
            raise ValueError(f"latent must be at least 1, got {self.latent}")
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))

    @property
    def bottom(self) -> int:
        """Side of the encoder's last feature map."""
        return self.size // 2 ** len(self.channels)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        data = asdict(self)
        data["channels"] = list(self.channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEConfig:
        """Inverse of `to_dict`; unknown keys are an error."""
        return cls(**data)


def _down(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=4, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU()
    )


def _up(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class WaferVAE(nn.Module):
    """Encoder (strided convs) to a Gaussian posterior, decoder (transposed convs) to fail
    logits. (B, 2, S, S) -> (B, S, S) logits, (B, Z) mean, (B, Z) log-variance."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        widths = (2, *config.channels)
        self.encoder = nn.Sequential(*(_down(a, b) for a, b in pairwise(widths)))
        flat = config.channels[-1] * config.bottom**2
        self.to_mu = nn.Linear(flat, config.latent)
        self.to_logvar = nn.Linear(flat, config.latent)
        self.from_z = nn.Linear(config.latent, flat)
        back = config.channels[::-1]
        self.decoder = nn.Sequential(
            *(_up(a, b) for a, b in pairwise(back)),
            nn.ConvTranspose2d(back[-1], 1, kernel_size=4, stride=2, padding=1),
        )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The posterior's mean and log-variance, (B, Z) each."""
        h = self.encoder(x).flatten(1)
        return self.to_mu(h), self.to_logvar(h).clamp(-20.0, 10.0)

    def decode(self, z: Tensor) -> Tensor:
        """Fail logits (B, S, S) of latent codes (B, Z)."""
        c, b = self.config.channels[-1], self.config.bottom
        return self.decoder(self.from_z(z).view(-1, c, b, b)).squeeze(1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Logits of a sample of the posterior (its mean in eval mode), mean, log-variance."""
        mu, logvar = self.encode(x)
        z = mu
        if self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


def _weighted_bce(logits: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-cell cross-entropy weighted by the die fraction (B, S, S), and die per wafer (B,).

    Written out as max(z, 0) - z t + log(1 + exp(-|z|)), which never overflows: the exported
    graph of ``binary_cross_entropy_with_logits`` gave inf for large logits under ONNX Runtime,
    and inf times a zero weight (a cell outside the wafer) is NaN.
    """
    weight = x[:, DIE]
    bce = F.relu(logits) - logits * x[:, FAIL] + torch.log1p(torch.exp(-logits.abs()))
    return bce * weight, weight.sum(dim=(1, 2)).clamp_min(1e-6)


def vae_loss(
    logits: Tensor, x: Tensor, mu: Tensor, logvar: Tensor, beta: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, reconstruction, KL), each a batch mean; reconstruction summed over the wafer's die.

    The ELBO's likelihood is a sum over die, not a mean: averaged per die, it would weigh a
    wafer's thousands of die like one latent dimension, and the KL term would win (posterior
    collapse: every map decoded to the average wafer, every embedding at the prior's mean).
    The novelty score (`novelty`) is the per-die mean, so wafers of any size compare.
    """
    per_cell, _ = _weighted_bce(logits, x)
    reconstruction = per_cell.sum(dim=(1, 2)).mean()
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
    return reconstruction + beta * kl, reconstruction, kl


def novelty(logits: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Novelty score (B,) (mean cross-entropy per die) and heatmap (B, S, S) (per cell).

    The plain reconstruction error. Subtracting the binary entropy of the wafer's fail rate
    (what a model knowing only the fail rate would pay; `rate_entropy`) stops known but random
    maps from scoring high, but in the leave-one-class-out runs it ranked a never-seen Center
    below the known wafers (validation AUROC 0.22, against 0.74 for the plain error): the
    shipped score is the plain one, and the evaluation reports both.
    """
    per_cell, die = _weighted_bce(logits, x)
    return per_cell.sum(dim=(1, 2)) / die, per_cell


def rate_entropy(x: Tensor) -> Tensor:
    """Binary entropy (nats) of each wafer's fail rate among its die (B,)."""
    die = x[:, DIE].sum(dim=(1, 2)).clamp_min(1e-6)
    rate = ((x[:, FAIL] * x[:, DIE]).sum(dim=(1, 2)) / die).clamp(1e-6, 1 - 1e-6)
    return -(rate * torch.log(rate) + (1 - rate) * torch.log1p(-rate))


class VAEScorer(nn.Module):
    """What export writes: (B, 2, S, S) -> score (B,), heatmap (B, S, S), latent mean (B, Z),
    from the posterior mean (no sampling: the same map always scores the same)."""

    def __init__(self, vae: WaferVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Score, heatmap and latent mean of ``x``."""
        mu, _ = self.vae.encode(x)
        score, heatmap = novelty(self.vae.decode(mu), x)
        return score, heatmap, mu

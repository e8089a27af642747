"""A plain CNN (the brief's baseline, §3.3): conv blocks, global average pooling, a linear head.

It reads either the legacy 26x26 token grid, one-hot encoded inside the module (pass, fail, out
of wafer, so "out of wafer" is not read as "twice a fail"), or an area-resampled input of float
channels (`wafercore.model_input`: fail fraction, fraction inside the wafer), which keeps every
failing die of a large map. Shapes: B batch, C channels, S the input's side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import Tensor, nn

from wafercore.classes import NUM_CLASSES
from wafercore.encoding import GRID

VOCAB = 3  # canonical die values: 0 pass, 1 fail, 2 out of wafer


@dataclass(frozen=True)
class CNNConfig:
    """Architecture of the baseline CNN. Stored in every checkpoint and exported model."""

    channels: tuple[int, ...] = (32, 64, 128)
    num_classes: int = NUM_CLASSES
    # The brief's network has one conv per block (94.6K parameters); 2 gives the VGG-style
    # variant (288.6K), the "289K" some write-ups quote for this baseline.
    convs_per_block: int = 1
    grid: int = GRID
    # 0: the legacy (B, 676) tokens, one-hot encoded; else the channels of an area input.
    in_channels: int = 0

    def __post_init__(self) -> None:
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be positive ints, got {self.channels}")
        if self.convs_per_block < 1:
            raise ValueError(f"convs_per_block must be at least 1, got {self.convs_per_block}")
        if self.grid < 2 ** len(self.channels):
            raise ValueError(f"a {self.grid}-cell grid cannot be pooled {len(self.channels)} times")
        if self.in_channels < 0:
            raise ValueError(f"in_channels must be 0 (tokens) or positive, got {self.in_channels}")
        # JSON turns tuples into lists: accept them back.
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        data = asdict(self)
        data["channels"] = list(self.channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CNNConfig:
        """Inverse of `to_dict`; unknown keys are an error."""
        return cls(**data)


class ConvBlock(nn.Module):
    """(Conv3x3 pad 1 → BatchNorm → ReLU) x convs, then MaxPool 2x2.

    (B, Cin, H, W) → (B, Cout, H // 2, W // 2).
    """

    def __init__(self, in_channels: int, out_channels: int, convs: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(convs):
            # No conv bias: BatchNorm's shift makes it redundant.
            cin = in_channels if i == 0 else out_channels
            layers += [
                nn.Conv2d(cin, out_channels, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
            ]
        layers.append(nn.MaxPool2d(2))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.layers(x)
        return out


class BaselineCNN(nn.Module):
    """Tokens (B, 676) int64, or an area input (B, C, S, S) float → class logits."""

    def __init__(self, config: CNNConfig | None = None) -> None:
        super().__init__()
        self.config = config or CNNConfig()
        widths = (self.config.in_channels or VOCAB, *self.config.channels)
        self.blocks = nn.Sequential(
            *(ConvBlock(a, b, self.config.convs_per_block) for a, b in pairwise(widths))
        )
        self.head = nn.Linear(widths[-1], self.config.num_classes)

    def forward(self, inputs: Tensor) -> Tensor:
        """Logits for a batch of wafers.

        Args:
            inputs: (B, 676) (or (B, 26, 26)) integer die values in {0, 1, 2}, or, for an
                area input, (B, C, S, S) fractions.

        Returns:
            (B, num_classes) logits.
        """
        g = self.config.grid
        if self.config.in_channels:
            x = inputs.to(self.head.weight.dtype)  # (B, C, S, S)
        else:
            grid = inputs.reshape(inputs.shape[0], g, g).long()  # (B, 26, 26)
            x = F.one_hot(grid, VOCAB).permute(0, 3, 1, 2)  # (B, 3, 26, 26)
            x = x.to(self.head.weight.dtype)
        x = self.blocks(x)  # each block halves S: (B, C_k, S / 2^k, S / 2^k)
        x = x.mean(dim=(2, 3))  # (B, C_last): global average pool
        logits: Tensor = self.head(x)  # (B, num_classes)
        return logits


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def flops_per_wafer(config: CNNConfig) -> int:
    """Multiply-add FLOPs (2 per MAC) of one forward pass for one wafer, analytically.

    Counts the convolutions and the head; BatchNorm, ReLU and pooling are a few percent.
    """
    flops, side, cin = 0, config.grid, config.in_channels or VOCAB
    for cout in config.channels:
        for _ in range(config.convs_per_block):
            flops += 2 * side * side * cin * cout * 9
            cin = cout
        side //= 2
    return flops + 2 * cin * config.num_classes

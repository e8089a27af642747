"""The Tiny Recursive Model (TRM) for wafer maps: one small 2-layer network applied recursively.

Per supervision step the latent ``z`` is updated ``n`` times from ``(x, y, z)`` and the answer
``y`` once from ``(y, z)``; that cycle runs ``T`` times, the first ``T - 1`` without gradient.
``n_sup`` supervision steps follow each other with the state detached in between, each with its
own loss (deep supervision) and a halting head that predicts whether the current answer is right,
so inference can stop as soon as it is confident. Shapes: B batch, L tokens (patches + class
token), D width.

The input is either the legacy 26x26 token grid, cut into ``patch`` x ``patch`` patches, or an
area-resampled input of float channels (`wafercore.model_input`), which a small convolutional
stem (``stem``: one stride-2 conv per entry) turns into (S / 2^len(stem))^2 tokens: the whole
wafer, at a few MFLOP.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import Tensor, nn

from wafercore.classes import NUM_CLASSES
from wafercore.encoding import GRID

VOCAB = 3  # canonical die values: 0 pass, 1 fail, 2 out of wafer


@dataclass(frozen=True)
class TRMConfig:
    """Architecture of a TRM. Stored in every checkpoint and exported model."""

    dim: int = 48
    heads: int = 4
    layers: int = 2
    mlp_ratio: float = 4.0
    patch: int = 2
    mixer: Literal["attention", "mlp"] = "attention"
    n: int = 2  # latent updates per cycle
    T: int = 2  # cycles per supervision step, the first T - 1 without gradient
    n_sup: int = 3  # supervision steps (the most a wafer can take at inference)
    rope_base: float = 100.0
    grid: int = GRID
    num_classes: int = NUM_CLASSES
    # 0: the legacy tokens; else the channels of an area input, read by the conv stem.
    in_channels: int = 0
    stem: tuple[int, ...] = ()  # widths of the stem's stride-2 convs (area input only)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stem", tuple(int(w) for w in self.stem))  # JSON gives lists
        if self.in_channels and (not self.stem or self.grid % 2 ** len(self.stem)):
            raise ValueError(
                f"an area input needs a stem whose stride {2 ** len(self.stem)} divides the "
                f"grid {self.grid}"
            )
        if not self.in_channels and self.stem:
            raise ValueError("a stem reads an area input: set in_channels")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if (self.dim // self.heads) % 4:
            raise ValueError("head width must be divisible by 4 for 2-D rotary embeddings")
        if min(self.n, self.T, self.n_sup, self.layers, self.patch) < 1:
            raise ValueError("n, T, n_sup, layers and patch must be at least 1")

    @property
    def side(self) -> int:
        """Tokens per side: patches of the padded grid, or the stem's output side."""
        if self.in_channels:
            return self.grid // 2 ** len(self.stem)
        return math.ceil(self.grid / self.patch)

    @property
    def tokens(self) -> int:
        """Sequence length: patches plus the class token."""
        return self.side * self.side + 1

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        data = asdict(self)
        data["stem"] = list(self.stem)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TRMConfig:
        """Inverse of `to_dict`; unknown keys are an error."""
        return cls(**data)


class RMSNorm(nn.Module):
    """x / rms(x) * gain."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SwiGLU(nn.Module):
    """Gated feed-forward: w3(silu(w1 x) * w2 x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w3 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class Rotary2D(nn.Module):
    """2-D rotary position embedding: half of each head rotates by row, half by column.

    The class token sits at angle 0 (no rotation): it has no place on the wafer.
    """

    def __init__(self, head_dim: int, side: int, base: float) -> None:
        super().__init__()
        quarter = head_dim // 4
        freqs = base ** (-torch.arange(quarter, dtype=torch.float32) / quarter)  # (q,)
        pos = torch.arange(side, dtype=torch.float32) - (side - 1) / 2  # centred
        rows = pos.repeat_interleave(side)  # (side*side,)
        cols = pos.repeat(side)
        angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=-1)  # (P, 2q)
        angles = torch.cat([torch.zeros(1, 2 * quarter), angles], dim=0)  # class token first
        self.register_buffer("cos", angles.cos(), persistent=False)  # (L, head_dim/2)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, H, L, hd); rotate pairs (x1, x2) of the two halves.
        x1, x2 = x.chunk(2, dim=-1)
        cos, sin = self.cos, self.sin
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention with 2-D rotary embeddings on queries and keys."""

    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.head_dim = config.dim // config.heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim, bias=False)
        self.out = nn.Linear(config.dim, config.dim, bias=False)
        self.rotary = Rotary2D(self.head_dim, config.side, config.rope_base)

    def forward(self, x: Tensor) -> Tensor:
        b, length, d = x.shape
        qkv = self.qkv(x).view(b, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, L, hd)
        q, k = self.rotary(q), self.rotary(k)
        # Explicit softmax attention: exports to every ONNX opset and runtime unchanged.
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(b, length, d))


class TokenMixer(nn.Module):
    """MLP across the sequence (the TRM's MLP variant for fixed-size grids)."""

    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        self.mix = SwiGLU(config.tokens, config.tokens)

    def forward(self, x: Tensor) -> Tensor:
        return self.mix(x.transpose(1, 2)).transpose(1, 2)


class Block(nn.Module):
    """One layer: token mixing then SwiGLU, each residual and post-normed (as the TRM)."""

    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        self.mixer: nn.Module = (
            Attention(config) if config.mixer == "attention" else TokenMixer(config)
        )
        self.norm1 = RMSNorm(config.dim)
        self.mlp = SwiGLU(config.dim, int(config.dim * config.mlp_ratio * 2 / 3))
        self.norm2 = RMSNorm(config.dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x + self.mixer(x))
        return self.norm2(x + self.mlp(x))


class GridEmbedding(nn.Module):
    """Canonical tokens (B, 676) → patch embeddings plus a class token (B, L, D)."""

    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        self.config = config
        self.proj = nn.Linear(VOCAB * config.patch * config.patch, config.dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.scale = math.sqrt(config.dim)

    def forward(self, tokens: Tensor) -> Tensor:
        c = self.config
        b = tokens.shape[0]
        grid = tokens.view(b, c.grid, c.grid).long()
        pad = c.side * c.patch - c.grid
        if pad:
            grid = F.pad(grid, (0, pad, 0, pad), value=2)  # padding is out of wafer
        onehot = F.one_hot(grid, VOCAB).to(self.proj.weight.dtype)  # (B, S*p, S*p, 3)
        patches = (
            onehot.view(b, c.side, c.patch, c.side, c.patch, VOCAB)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(b, c.side * c.side, c.patch * c.patch * VOCAB)
        )
        x = self.proj(patches)  # (B, P, D)
        return torch.cat([self.cls.expand(b, -1, -1), x], dim=1) * self.scale  # (B, L, D)


class ConvStem(nn.Module):
    """Area input (B, C, S, S) → stem tokens plus a class token (B, L, D).

    Each stage is Conv3x3 stride 2 → BatchNorm → GELU, halving S; a linear projection takes
    each output cell to a token of width D.
    """

    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in zip((config.in_channels, *config.stem), config.stem, strict=False):
            layers += [
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.GELU(),
            ]
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(config.stem[-1], config.dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.scale = math.sqrt(config.dim)

    def forward(self, inputs: Tensor) -> Tensor:
        b = inputs.shape[0]
        features = self.convs(inputs.to(self.proj.weight.dtype))  # (B, W, side, side)
        x = self.proj(features.flatten(2).transpose(1, 2))  # (B, side*side, D)
        return torch.cat([self.cls.expand(b, -1, -1), x], dim=1) * self.scale  # (B, L, D)


@dataclass
class StepOutput:
    """One supervision step: the new state and what the heads say about it."""

    y: Tensor  # (B, L, D)
    z: Tensor  # (B, L, D)
    logits: Tensor  # (B, classes)
    halt_logit: Tensor  # (B,)


class TinyRecursiveModel(nn.Module):
    """The TRM: embedding, one shared 2-layer network, classification and halting heads."""

    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed: nn.Module = ConvStem(config) if config.in_channels else GridEmbedding(config)
        self.net = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.head = nn.Linear(config.dim, config.num_classes)
        self.halt = nn.Linear(config.dim, 1)
        self.apply(_init_weights)
        # Start the halting head pessimistic: early in training answers are wrong.
        nn.init.constant_(self.halt.bias, -2.0)

    def initial_state(
        self, batch: int, device: torch.device | None = None
    ) -> tuple[Tensor, Tensor]:
        """y(0) = z(0) = 0, (B, L, D) each."""
        shape = (batch, self.config.tokens, self.config.dim)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def _net(self, h: Tensor) -> Tensor:
        for block in self.net:
            h = block(h)
        return h

    def _cycle(self, x: Tensor, y: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        for _ in range(self.config.n):
            z = self._net(x + y + z)
        return self._net(y + z), z

    def step(self, x: Tensor, y: Tensor, z: Tensor) -> StepOutput:
        """One supervision step from embedded input ``x`` and state ``(y, z)``."""
        if self.config.T > 1:
            with torch.no_grad():
                for _ in range(self.config.T - 1):
                    y, z = self._cycle(x, y, z)
        y, z = self._cycle(x, y, z)
        cls = y[:, 0]  # (B, D): the class token of the answer
        return StepOutput(y=y, z=z, logits=self.head(cls), halt_logit=self.halt(cls).squeeze(-1))

    def forward(self, tokens: Tensor, n_sup: int | None = None) -> list[StepOutput]:
        """All supervision steps, state detached between them (deep supervision).

        Args:
            tokens: (B, 676) canonical die values, or an area input (B, C, S, S).
            n_sup: steps to run; the config's ``n_sup`` by default.
        """
        x = self.embed(tokens)
        y, z = self.initial_state(tokens.shape[0], tokens.device)
        outputs = []
        for _ in range(n_sup or self.config.n_sup):
            out = self.step(x, y, z)
            outputs.append(out)
            y, z = out.y.detach(), out.z.detach()
        return outputs


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=1.0 / math.sqrt(module.in_features))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ExportableStep(nn.Module):
    """One supervision step as a graph with explicit state: what ONNX export traces.

    Inputs: tokens (B, 676) int64, y (B, L, D), z (B, L, D).
    Outputs: y', z', logits (B, classes), halt probability (B,).
    """

    def __init__(self, model: TinyRecursiveModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, tokens: Tensor, y: Tensor, z: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = self.model.step(self.model.embed(tokens), y, z)
        return out.y, out.z, out.logits, torch.sigmoid(out.halt_logit)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def flops_per_step(config: TRMConfig) -> int:
    """Multiply-add FLOPs (2 per MAC) of one supervision step for one wafer, analytically.

    Counts the matrix products (embedding, mixers, MLPs, heads); norms and activations are
    a few percent and left out. `tests` cross-check it against torch's FLOP counter.
    """
    c = config
    length, d = c.tokens, c.dim
    hidden = int(d * c.mlp_ratio * 2 / 3)
    if c.mixer == "attention":
        mixer = 2 * length * d * 3 * d + 2 * length * d * d + 2 * 2 * length * length * d
    else:
        mixer = 2 * d * length * 2 * length + 2 * d * length * length
    mlp = 2 * length * d * 2 * hidden + 2 * length * hidden * d
    net_calls = c.T * (c.n + 1)
    embed = 2 * (length - 1) * VOCAB * c.patch * c.patch * d
    if c.in_channels:
        embed, side, cin = 2 * (length - 1) * c.stem[-1] * d, c.grid, c.in_channels
        for width in c.stem:
            side //= 2
            embed += 2 * side * side * cin * width * 9
            cin = width
    heads = 2 * d * (c.num_classes + 1)
    return embed + net_calls * c.layers * (mixer + mlp) + heads

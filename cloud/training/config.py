"""Typed training configs, read from YAML files in ``configs/``.

Every knob of a run lives here so a checkpoint's config reproduces it; nothing else in training
has a hyper-parameter default of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cloud.models.trm import TRMConfig
from wafercore.classes import CLASS_NAMES
from wafercore.model_input import InputSpec

ClassName = Literal[CLASS_NAMES]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Which data, which protocol."""

    path: Path = Path("labelled.npz")
    protocol: Literal["official", "production", "random"] = "official"
    val_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    limit: int | None = Field(default=None, description="Use at most this many rows (smoke runs).")


class InputConfig(_Strict):
    """What the model reads: declared in its manifest, built by `wafercore.model_input`.

    The default is the legacy 26x26 nearest-neighbour token grid; ``{size: 64, resample:
    area, channels: [fail, die]}`` is the area-resampled input that keeps every failing die.
    """

    size: int = 26
    resample: Literal["nearest", "area"] = "nearest"
    channels: tuple[Literal["fail", "die"], ...] = ()

    @model_validator(mode="after")
    def _valid(self) -> InputConfig:
        self.spec()  # raises ValueError naming what is wrong
        return self

    def spec(self) -> InputSpec:
        """The runtime's description of this input."""
        return InputSpec(size=self.size, resample=self.resample, channels=tuple(self.channels))


class TRMModelConfig(_Strict):
    """Architecture of the TRM (mirrors `cloud.models.trm.TRMConfig`)."""

    dim: int = 48
    heads: int = 4
    layers: int = 2
    mlp_ratio: float = 4.0
    patch: int = 2
    mixer: Literal["attention", "mlp"] = "attention"
    n: int = 2
    T: int = 2
    n_sup: int = 3
    rope_base: float = 100.0
    stem: tuple[int, ...] = Field(
        default=(), description="Stride-2 conv widths turning an area input into tokens."
    )

    def build(self, spec: InputSpec | None = None) -> TRMConfig:
        """The model's own config, for the run's input (the legacy tokens by default)."""
        spec = spec or InputSpec()
        return TRMConfig(
            **self.model_dump(),
            grid=spec.size,
            in_channels=0 if spec.is_tokens else len(spec.channels),
        )


class CNNModelConfig(_Strict):
    """A plain CNN: conv blocks, global average pooling, a linear head (the brief's has 3)."""

    channels: tuple[int, ...] = Field(default=(32, 64, 128), min_length=1)
    convs_per_block: int = Field(default=1, ge=1)


class VAEModelConfig(_Strict):
    """The novelty model (mirrors `cloud.models.vae.VAEConfig`; the input's size is its own)."""

    channels: tuple[int, ...] = Field(default=(32, 64, 128), min_length=1)
    latent: int = Field(default=32, ge=1)
    beta: float = Field(default=0.5, ge=0, description="KL weight; < 1 sharpens the score.")


class NoveltyConfig(_Strict):
    """How a VAE's novelty threshold is set, and which classes it must never see."""

    false_alarm_rate: float = Field(
        default=0.01, gt=0, lt=1, description="Share of known-pattern val wafers flagged novel."
    )
    exclude: tuple[ClassName, ...] = Field(
        default=(), description="Classes left out of training and calibration (leave-one-out)."
    )


class RulesModelConfig(_Strict):
    """Decision tree over spatial features."""

    max_depth: int = 10
    min_samples_leaf: int = 5


class OptimConfig(_Strict):
    """Optimisation and sampling."""

    epochs: int = Field(default=8, ge=1)
    samples_per_epoch: int | None = Field(default=None, description="None: one pass over train.")
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_steps: int = Field(default=200, ge=0)
    min_lr_ratio: float = Field(default=0.05, ge=0, le=1)
    grad_clip: float = Field(default=1.0, gt=0)
    ema_decay: float = Field(default=0.999, ge=0, lt=1)
    halt_lambda: float = Field(default=0.5, ge=0)
    class_weighting: Literal["none", "inverse", "effective", "logit_adjust"] = "none"
    sampling: Literal["natural", "sqrt", "balanced"] = "sqrt"
    size_balanced: bool = Field(
        default=True,
        description="Within a class, draw every map-size bucket equally often (DESIGN.md §4).",
    )
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    reviewed_weight: float = Field(
        default=1.0,
        gt=0,
        description="How many times as often a reviewed production wafer (a Test-lot row in "
        "train, production protocol) is drawn as a Training wafer.",
    )


class AugmentConfig(_Strict):
    """What makes the model invariant to rotation, noise and wafer size."""

    flips_rotations: bool = True
    noise: bool = Field(
        default=True,
        description="With flips_rotations on an area input: also the brief's 1-2% noise (one "
        "operation per map, as the token grid's); off: a random rotation or mirror image only.",
    )
    resolution_scale: tuple[float, float] | None = Field(
        default=(0.6, 1.6),
        description="Resample each raw map to a random scale in this range before the 26x26 "
        "grid, so die pitch and map size do not give the class away; None turns it off.",
    )
    synthetic_per_class: int = Field(
        default=0, ge=0, description="Synthetic maps added per rare class (Donut, Near-Full, ...)."
    )


class SemiConfig(_Strict):
    """Learning from the unlabelled production stream (FixMatch with class-balanced thresholds).

    Each step adds ``ratio`` x batch unlabelled maps: the EMA model labels a lightly augmented
    view, and where it is confident enough the model learns that label on a strongly augmented
    view. FlexMatch's per-class thresholds (``flex``) lower the bar for classes the teacher
    rarely predicts with confidence, so the None-heavy stream does not drown the rare ones.
    """

    path: Path = Path("unlabelled.npz")
    limit: int | None = Field(default=None, description="Use at most this many unlabelled maps.")
    ratio: int = Field(default=1, ge=1)
    threshold: float = Field(default=0.95, gt=0, le=1)
    flex: bool = True
    min_threshold: float = Field(
        default=0.7, gt=0, le=1, description="No class's threshold goes below this (flex)."
    )
    weight: float = Field(default=1.0, gt=0)
    warmup_epochs: int = Field(
        default=1, ge=0, description="Supervised epochs before the teacher's labels are used."
    )


class PseudoConfig(_Strict):
    """Self-training: maps of the unlabelled stream with a teacher's classes as labels.

    ``labels`` is a file of `wafer-cloud pseudo-label` (made on ``path``; relative to the
    cloud's work dir, where that command writes it by default); the run keeps its
    maps whose confidence reaches ``threshold``, at most ``max_per_class`` per class (the most
    confident), and trains on them beside the labelled training maps.
    """

    labels: Path
    path: Path = Path("unlabelled.npz")
    threshold: float = Field(default=0.9, gt=0, le=1)
    max_per_class: int | None = Field(default=None, ge=1)


class TrainConfig(_Strict):
    """One training run."""

    kind: Literal["trm", "cnn", "rules", "vae"]
    version: str = Field(pattern=r"^(trm|cnn|rules|vae)-v\d+\.\d+\.\d+$")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = DataConfig()
    input: InputConfig = InputConfig()
    trm: TRMModelConfig = TRMModelConfig()
    cnn: CNNModelConfig = CNNModelConfig()
    rules: RulesModelConfig = RulesModelConfig()
    vae: VAEModelConfig = VAEModelConfig()
    novelty: NoveltyConfig = NoveltyConfig()
    optim: OptimConfig = OptimConfig()
    augment: AugmentConfig = AugmentConfig()
    semi: SemiConfig | None = None
    pseudo: PseudoConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.kind == "vae" and (
            self.input.resample != "area" or tuple(self.input.channels) != ("fail", "die")
        ):
            raise ValueError(
                "a vae reads the area input: input.resample area, channels [fail, die]"
            )
        if self.kind == "vae" and self.semi is not None:
            raise ValueError("semi is for classifiers; a vae learns the known patterns only")
        if self.kind in ("vae", "rules") and self.pseudo is not None:
            raise ValueError(f"pseudo is for trained classifiers, not a {self.kind}")
        if self.optim.reviewed_weight != 1.0 and self.data.protocol != "production":
            raise ValueError("optim.reviewed_weight needs data.protocol production")
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings)."""
        return self.model_dump(mode="json")


def load_config(path: Path) -> TrainConfig:
    """Read and validate a YAML training config.

    Raises:
        ValueError: the file is not valid YAML or a field is missing, unknown or out of range;
            the message names the field.
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise ValueError(f"{path}: {problems}") from None

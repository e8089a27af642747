"""A job's training config: a config of ``settings.configs_dir`` by name, with overrides.

Overrides are a mapping of dotted config paths to values (``{"optim.epochs": 3}``), applied to
the YAML before the config's pydantic model validates the whole; a bad one is reported as
``InvalidInput("overrides.optim.epochs", reason)``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cloud.settings import CloudSettings
from cloud.training.config import TrainConfig
from wafercore.errors import InvalidInput

CONFIG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
"""A config name: a file name in ``configs_dir`` without ``.yaml`` (no paths)."""
OVERRIDE_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
MAX_OVERRIDES = 64
DEPLOYABLE_KINDS = ("cnn", "trm")
"""What a job may train: models with an ONNX graph a node can serve."""


def available_configs(settings: CloudSettings) -> list[str]:
    """Names of the configs a job may ask for."""
    return sorted(p.stem for p in settings.configs_dir.glob("*.yaml") if p.is_file())


def config_path(settings: CloudSettings, name: str) -> Path:
    """The file of config ``name``.

    Raises:
        InvalidInput: ``config_name``: not a name, or no such config.
    """
    if not isinstance(name, str) or not CONFIG_NAME.match(name) or name.endswith(".yaml"):
        raise InvalidInput("config_name", f"{name!r} is not a config name like 'cnn64'")
    path = settings.configs_dir / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(available_configs(settings)) or "none"
        raise InvalidInput("config_name", f"no config {name!r} (known: {known})")
    return path


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the config dict ``raw`` with each dotted path set to its value.

    A missing (or null) section on the way is created, so ``{"semi.ratio": 2}`` turns
    semi-supervision on with its defaults.

    Raises:
        InvalidInput: ``overrides`` or ``overrides.<path>``: a malformed path, or one that
            runs through a value that is not a section.
    """
    if not isinstance(overrides, Mapping):
        raise InvalidInput("overrides", "must be a mapping of dotted config paths to values")
    if len(overrides) > MAX_OVERRIDES:
        raise InvalidInput("overrides", f"at most {MAX_OVERRIDES} overrides")
    out = copy.deepcopy(dict(raw))
    for path, value in overrides.items():
        if not isinstance(path, str) or not OVERRIDE_PATH.match(path):
            raise InvalidInput(f"overrides.{path}", "not a dotted config path like 'optim.epochs'")
        *sections, key = path.split(".")
        node = out
        for depth, section in enumerate(sections):
            child = node.get(section)
            if child is None:
                child = node[section] = {}
            if not isinstance(child, dict):
                where = ".".join(sections[: depth + 1])
                raise InvalidInput(f"overrides.{path}", f"{where!r} is a value, not a section")
            node = child
        node[key] = value
    return out


def _blame(loc: tuple[Any, ...], overrides: Mapping[str, Any]) -> str:
    """The input a validation error at ``loc`` is the fault of: the override on that path
    (or on a section or field of it), else the config itself."""
    dotted = ".".join(str(part) for part in loc)
    for path in overrides:
        if dotted == path or dotted.startswith(f"{path}.") or path.startswith(f"{dotted}."):
            return f"overrides.{path}"
    return "config_name"


def resolve_config(
    settings: CloudSettings, name: str, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """Config ``name`` with ``overrides`` applied, validated.

    Raises:
        InvalidInput: ``config_name`` (unknown, unreadable or invalid config, or one that
            builds no deployable model) or ``overrides.<path>`` (a value the config's model
            refuses, or an unknown field).
    """
    path = config_path(settings, name)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise InvalidInput("config_name", f"{path.name} cannot be read: {err}") from None
    if not isinstance(raw, dict):
        raise InvalidInput("config_name", f"{path.name} is not a mapping")
    overrides = dict(overrides or {})
    merged = apply_overrides(raw, overrides)
    try:
        config = TrainConfig.model_validate(merged)
    except ValidationError as err:
        first = err.errors()[0]
        field = _blame(tuple(first["loc"]), overrides)
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidInput(field, f"{where}: {first['msg']}") from None
    if config.kind not in DEPLOYABLE_KINDS:
        field = _blame(("kind",), overrides)
        raise InvalidInput(
            field, f"kind {config.kind!r} exports no ONNX graph: a job trains {DEPLOYABLE_KINDS}"
        )
    return config

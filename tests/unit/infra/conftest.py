"""What the deployment files' checks share: the repository, the console scripts, the settings.

A container's command must be a console script of pyproject.toml followed by a subcommand that
exists, with options that command accepts; an environment variable of a tier must name a field
of that tier's settings class.
"""

from __future__ import annotations

import importlib
import os
import tomllib
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner
from pydantic import AliasChoices, BaseModel
from pydantic_settings import BaseSettings

from cloud.settings import CloudSettings
from edge.settings import EdgeSettings
from fab_server.settings import FabSettings

REPO = Path(__file__).resolve().parents[3]
INFRA = REPO / "infra"

TIER_SETTINGS: dict[str, type[BaseSettings]] = {
    "EDGE_": EdgeSettings,
    "FAB_": FabSettings,
    "CLOUD_": CloudSettings,
}
"""Environment prefix -> the settings class that reads it."""
SCRIPT_TIER = {"wafer-edge": "EDGE_", "wafer-fab": "FAB_", "wafer-cloud": "CLOUD_"}
"""Console script -> the prefix of the settings its commands build."""


def console_scripts() -> dict[str, click.Command]:
    """``[project.scripts]`` of pyproject.toml, each loaded to its click command."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    scripts: dict[str, click.Command] = {}
    for name, target in project["scripts"].items():
        module, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command), f"{name} = {target} is not a click command"
        scripts[name] = command
    return scripts


def command_problems(argv: list[str], scripts: dict[str, click.Command]) -> list[str]:
    """Why ``argv`` is not a valid command line of a console script (empty: it is).

    Walks the click groups down to the command, lets click parse its options (types and
    ranges included, nothing run), then runs ``<script> <subcommands> --help``.
    """
    if not argv or argv[0] not in scripts:
        return [f"{argv[:1]}: not a console script of pyproject.toml ({sorted(scripts)})"]
    root = command = scripts[argv[0]]
    path: list[str] = []
    rest = list(argv[1:])
    while isinstance(command, click.Group):
        if not rest or rest[0].startswith("-"):
            return [f"{argv}: {' '.join([argv[0], *path])} needs a subcommand first"]
        name = rest.pop(0)
        sub = command.get_command(click.Context(command), name)
        if sub is None:
            return [f"{argv}: {' '.join([argv[0], *path])} has no subcommand {name!r}"]
        path.append(name)
        command = sub
    try:
        command.make_context(" ".join([argv[0], *path]), rest)
    except click.ClickException as exc:
        return [f"{argv}: {exc.format_message()}"]
    result = CliRunner().invoke(root, [*path, "--help"])
    if result.exit_code != 0:
        return [f"{argv}: '--help' exited {result.exit_code}: {result.output}"]
    return []


def _field_names(model: type[BaseModel]) -> dict[str, str]:
    """Environment spelling (upper case) -> field name, aliases included."""
    names: dict[str, str] = {}
    for name, field in model.model_fields.items():
        names[name.upper()] = name
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            for choice in alias.choices:
                if isinstance(choice, str):
                    names[choice.upper()] = name
        elif isinstance(alias, str):
            names[alias.upper()] = name
    return names


def env_key_problem(key: str, settings: type[BaseSettings]) -> str | None:
    """Why ``key`` (``FAB_SYNC__HASH_KEY_FILE``) is not a field of ``settings`` (None: it is)."""
    prefix = str(settings.model_config.get("env_prefix", "")).upper()
    delimiter = settings.model_config.get("env_nested_delimiter")
    names = _field_names(settings)
    if key.upper() in names:  # a full alias such as CLOUD_DATA_DIR
        return None
    if not key.upper().startswith(prefix):
        return f"{key}: not a {settings.__name__} variable (prefix {prefix})"
    parts = key[len(prefix) :].upper().split(delimiter) if delimiter else [key[len(prefix) :]]
    model: type[BaseModel] = settings
    for depth, part in enumerate(parts):
        fields = {n.upper(): n for n in model.model_fields}
        if part not in fields:
            return f"{key}: {model.__name__} has no field {part.lower()!r}"
        annotation = model.model_fields[fields[part]].annotation
        if depth < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return f"{key}: {fields[part]} is not a nested model"
            model = annotation
    return None


def env_problems(env: dict[str, str], own_prefix: str | None) -> list[str]:
    """Problems of a tier's environment: unknown fields, or another tier's variables."""
    problems = []
    for key in env:
        for prefix, settings in TIER_SETTINGS.items():
            if not key.startswith(prefix):
                continue
            if own_prefix is not None and prefix != own_prefix:
                problems.append(f"{key}: a {prefix}* variable in a {own_prefix}* process")
            elif (problem := env_key_problem(key, settings)) is not None:
                problems.append(problem)
    return problems


def build_settings(
    monkeypatch: pytest.MonkeyPatch, prefix: str, env: dict[str, str]
) -> BaseSettings:
    """The tier's settings built from exactly ``env`` (its values validated as the process
    would)."""
    for key in list(os.environ):
        if key.startswith(tuple(TIER_SETTINGS)) or key == "WAFER_DATA_DIR":
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return TIER_SETTINGS[prefix]()


@pytest.fixture(scope="session")
def infra() -> SimpleNamespace:
    """The shared checks, for the test modules (which cannot import this conftest)."""
    scripts = console_scripts()
    return SimpleNamespace(
        repo=REPO,
        root=INFRA,
        scripts=scripts,
        script_tier=SCRIPT_TIER,
        command_problems=lambda argv: command_problems(argv, scripts),
        env_problems=env_problems,
        build_settings=build_settings,
    )

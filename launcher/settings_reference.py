"""The configuration reference of ``docs/operations.md``, generated from the settings classes.

Every tier reads its environment through one pydantic-settings class (``EDGE_*``, ``FAB_*``,
``CLOUD_*``, ``WAFER_*``). This module walks each class's fields, nested models included
(``FAB_SYNC__TOKEN``: the ``__`` delimiter), and renders one Markdown table per tier: variable,
type, default, description. The description is the field's ``description``, else the first line
of its attribute docstring; a field with neither is *undocumented*, and `undocumented` lists it.
A secret (a ``SecretStr``, or a field named like a token, secret or password) never shows its
default.

``docs/operations.md`` carries the rendered block between `START` and `END`;
``wafer-platform settings-reference --check`` (and ``tests/unit/launcher``) fail, naming the
variables, when the committed block is not what the code renders.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import re
import textwrap
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import click
from pydantic import AliasChoices, BaseModel, SecretBytes, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from cloud.settings import CloudSettings
from edge.settings import EdgeSettings
from fab_server.settings import FabSettings
from launcher.settings import PlatformSettings

REPO = Path(__file__).resolve().parents[1]
"""The checkout: paths in defaults and source files are shown relative to it."""
DOC = REPO / "docs" / "operations.md"
"""The operations guide that carries the generated block."""
START = "<!-- settings-reference:start -->"
END = "<!-- settings-reference:end -->"
UNDOCUMENTED = "*undocumented*"
"""The description cell of a field that has neither a description nor an attribute docstring."""
SECRET_DEFAULT = "secret, no default"

_SECRET_TYPES = (SecretStr, SecretBytes)
_SECRET_NAME = re.compile(r"(^|_)(token|tokens|secret|secrets|password|passwords)$")
_HTML_START = re.compile(r"<(?=[A-Za-z/!?])")
"""A ``<`` that Markdown would take for the start of an HTML tag (``<key_id>``)."""
_HEADER = "| variable | type | default | description |\n|---|---|---|---|"
_TYPE_NAMES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Path: "path",
    SecretStr: "secret string",
    SecretBytes: "secret bytes",
}


@dataclass(frozen=True)
class Tier:
    """One settings class and how the guide titles its table."""

    title: str
    settings: type[BaseSettings]


TIERS: tuple[Tier, ...] = (
    Tier("Edge node", EdgeSettings),
    Tier("Fab server", FabSettings),
    Tier("Cloud", CloudSettings),
    Tier("One-machine launcher", PlatformSettings),
)
"""Every settings class of the platform, in the order the guide lists them."""


@dataclass(frozen=True)
class Setting:
    """One environment variable of a tier.

    Attributes:
        env: the variable (``FAB_SYNC__TOKEN``); with aliases, ``CLOUD_DATA_DIR or WAFER_DATA_DIR``.
        type: its type in words, with its constraints.
        default: the default in words (never a secret's value).
        description: what it does; empty when the code documents it nowhere.
        source: where the field is declared (``fab_server/settings.py: SyncSettings.token``).
        secret: whether the value is a credential.
    """

    env: str
    type: str
    default: str
    description: str
    source: str
    secret: bool

    def row(self) -> str:
        """The setting's Markdown table row."""
        names = " or ".join(f"`{name}`" for name in self.env.split(" or "))
        cells = (names, self.type, self.default, self.description or UNDOCUMENTED)
        return "| " + " | ".join(_cell(cell) for cell in cells) + " |"


def settings_of(settings: type[BaseSettings]) -> list[Setting]:
    """Every variable ``settings`` reads, nested models walked with its delimiter."""
    prefix = str(settings.model_config.get("env_prefix", "")).upper()
    delimiter = settings.model_config.get("env_nested_delimiter") or ""
    return list(_walk(settings, prefix, delimiter, top=True))


def all_settings() -> list[Setting]:
    """The variables of every tier, in the guide's order."""
    return [setting for tier in TIERS for setting in settings_of(tier.settings)]


def undocumented() -> list[Setting]:
    """The settings whose field has no description and no attribute docstring."""
    return [setting for setting in all_settings() if not setting.description]


def render() -> str:
    """The generated block (what goes between `START` and `END`, markers excluded)."""
    parts = [
        "<!-- Generated from the settings classes by `wafer-platform settings-reference`; "
        "do not edit by hand. -->"
    ]
    for tier in TIERS:
        cls = tier.settings
        prefix = str(cls.model_config.get("env_prefix", "")).upper()
        delimiter = cls.model_config.get("env_nested_delimiter")
        nested = f"; nested fields joined by `{delimiter}`" if delimiter else ""
        rows = "\n".join(setting.row() for setting in settings_of(cls))
        parts.append(
            f"### {tier.title}: `{prefix}*`\n\n"
            f"`{_source_file(cls)}`, class `{cls.__name__}`{nested}.\n\n{_HEADER}\n{rows}"
        )
    return "\n\n".join(parts) + "\n"


def extract_block(document: str) -> str | None:
    """The text between the markers of ``document`` (None: a marker is missing)."""
    start, end = document.find(START), document.find(END)
    if start < 0 or end < start:
        return None
    return document[start + len(START) : end].strip("\n") + "\n"


def replace_block(document: str, block: str) -> str:
    """``document`` with ``block`` between its markers.

    Raises:
        ValueError: a marker is missing.
    """
    start, end = document.find(START), document.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no {START} ... {END} block")
    return f"{document[: start + len(START)]}\n{block.strip(chr(10))}\n{document[end:]}"


def problems(document: str) -> list[str]:
    """Why the block of ``document`` is not what the code renders (empty: it is).

    Each problem names a variable: missing from the docs, in the docs but no longer a setting,
    or stale (its row differs); layout differences are one problem of their own.
    """
    committed = extract_block(document)
    if committed is None:
        return [f"no {START} ... {END} block"]
    expected = render()
    if committed == expected:
        return []
    have, want = _rows(committed), _rows(expected)
    found = [f"{env}: missing from the docs" for env in want if env not in have]
    found += [f"{env}: in the docs but not a setting" for env in have if env not in want]
    found += [
        f"{env}: stale\n    docs: {have[env]}\n    code: {want[env]}"
        for env in want
        if env in have and have[env] != want[env]
    ]
    return found or ["the block's headings or layout differ from the generated one"]


@click.command(
    "settings-reference",
    help="Print the configuration reference of docs/operations.md, generated from the settings "
    "classes. --check: exit 1, naming the variables, when the guide's block is stale.",
)
@click.option("--check", is_flag=True, help="Compare the guide's block with the code instead.")
@click.option("--write", is_flag=True, help="Rewrite the guide's block from the code.")
@click.option(
    "--doc",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DOC,
    show_default="docs/operations.md",
    help="The guide with the block.",
)
def settings_reference(check: bool, write: bool, doc: Path) -> None:
    """Print, check or rewrite the generated configuration reference."""
    if not check and not write:
        click.echo(render(), nl=False)
        return
    try:
        document = doc.read_text(encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"{doc}: {exc.strerror}") from None
    if write:
        try:
            doc.write_text(replace_block(document, render()), encoding="utf-8")
        except ValueError as exc:
            raise click.ClickException(f"{doc}: {exc}") from None
        click.echo(f"wrote the configuration reference of {doc}")
        return
    found = problems(document)
    if found:
        listed = "\n".join(f"  - {problem}" for problem in found)
        raise click.ClickException(
            f"{doc}: the configuration reference is stale:\n{listed}\n"
            "regenerate it: wafer-platform settings-reference --write"
        )
    undocumented_count = sum(1 for setting in all_settings() if not setting.description)
    click.echo(
        f"{doc}: the configuration reference is current "
        f"({undocumented_count} settings undocumented in the code)"
    )


def _walk(
    model: type[BaseModel], prefix: str, delimiter: str, *, top: bool = False
) -> Iterator[Setting]:
    docstrings = _attribute_docstrings(model)
    for name, field in model.model_fields.items():
        nested = field.annotation
        if delimiter and isinstance(nested, type) and issubclass(nested, BaseModel):
            yield from _walk(nested, f"{prefix}{name.upper()}{delimiter}", delimiter)
            continue
        secret = _is_secret(name, field.annotation)
        description = field.description or docstrings.get(name, "")
        yield Setting(
            env=" or ".join(_env_names(field, f"{prefix}{name.upper()}", top=top)),
            type=_type(field.annotation, field.metadata),
            default=_default(field, secret=secret),
            description=" ".join(description.split()),
            source=f"{_source_file(model)}: {model.__name__}.{name}",
            secret=secret,
        )


def _env_names(field: FieldInfo, name: str, *, top: bool) -> list[str]:
    """The variables of a field: its aliases replace the prefixed name (pydantic-settings)."""
    alias = field.validation_alias if top else None
    if isinstance(alias, AliasChoices):
        return [choice.upper() for choice in alias.choices if isinstance(choice, str)] or [name]
    if isinstance(alias, str):
        return [alias.upper()]
    return [name]


def _attribute_docstrings(model: type[BaseModel]) -> dict[str, str]:
    """First lines of the string literals that follow field declarations, base classes too."""
    found: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if cls in (BaseModel, BaseSettings) or not issubclass(cls, BaseModel):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for statement, following in itertools.pairwise(body):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                lines = inspect.cleandoc(following.value.value).splitlines()
                if lines and lines[0].strip():
                    found[statement.target.id] = lines[0].strip()
    return found


def _is_secret(name: str, annotation: Any) -> bool:
    return _mentions(annotation, _SECRET_TYPES) or bool(_SECRET_NAME.search(name))


def _mentions(annotation: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, kinds):
        return True
    return any(_mentions(arg, kinds) for arg in get_args(annotation))


def _type(annotation: Any, metadata: Sequence[Any] = ()) -> str:
    text = _type_name(annotation)
    limits = [limit for item in metadata if (limit := _constraint(item))]
    return f"{text} ({', '.join(limits)})" if limits else text


def _type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in args if arg is not type(None))
    if origin is Literal:
        return " or ".join(f"`{_value(arg)}`" for arg in args)
    if origin in (list, tuple, set, frozenset):
        (item, *_) = args or (Any,)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return f"JSON list of {{{', '.join(item.model_fields)}}}"
        return f"JSON list of {_type_name(item)}"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " or ".join(f"`{member.value}`" for member in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"JSON object {{{', '.join(annotation.model_fields)}}}"
    if annotation in _TYPE_NAMES:
        return _TYPE_NAMES[annotation]
    return str(getattr(annotation, "__name__", annotation))


def _constraint(item: Any) -> str:
    bounds = (
        (annotated_types.Ge, "ge", ">="),
        (annotated_types.Gt, "gt", ">"),
        (annotated_types.Le, "le", "<="),
        (annotated_types.Lt, "lt", "<"),
    )
    for kind, attribute, sign in bounds:
        if isinstance(item, kind):
            return f"{sign} {_value(getattr(item, attribute))}"
    if isinstance(item, annotated_types.MinLen):
        return f"length >= {item.min_length}"
    if isinstance(item, annotated_types.MaxLen):
        return f"length <= {item.max_length}"
    pattern = getattr(item, "pattern", None)
    if isinstance(pattern, str):
        return f"matches `{pattern}`"
    return ""


def _default(field: FieldInfo, *, secret: bool) -> str:
    factory = field.default_factory
    value: Any = field.default
    if secret:
        empty = factory is not None or value is None or value in ("", [], {})
        return SECRET_DEFAULT if empty else "secret, default not shown"
    if factory is not None:
        if factory in (list, dict, tuple, set):
            return f"`{json.dumps(factory())}`"
        return f"computed: `{getattr(factory, '__name__', 'factory')}()`"
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "unset"
    return f"`{_value(value)}`"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return _value(value.value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, Path):
        return _shown_path(value)
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if isinstance(value, list | dict | tuple):
        return json.dumps(value)
    if value == "":
        return '""'
    return str(value)


def _shown_path(path: Path) -> str:
    """A path default: one inside the checkout as ``<checkout>/...``, same on every machine."""
    if path.is_absolute() and path.is_relative_to(REPO):
        return f"<checkout>/{path.relative_to(REPO).as_posix()}"
    return path.as_posix()


def _source_file(cls: type) -> str:
    try:
        path = Path(inspect.getfile(cls)).resolve()
    except (OSError, TypeError):
        return cls.__module__
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else cls.__module__


def _cell(text: str) -> str:
    """A table cell: pipes escaped, and tag-like ``<`` outside code spans (``<key_id>``)."""
    spans = text.replace("\n", " ").split("`")
    spans[::2] = [_HTML_START.sub("&lt;", span) for span in spans[::2]]
    return "`".join(spans).replace("|", "\\|")


def _rows(block: str) -> dict[str, str]:
    """Table rows of a rendered block by their first cell's variables (``A or B``)."""
    rows: dict[str, str] = {}
    for line in block.splitlines():
        if not line.startswith("| `"):
            continue
        first = line[2:].split(" | ", 1)[0]
        rows[first.replace("`", "")] = line
    return rows

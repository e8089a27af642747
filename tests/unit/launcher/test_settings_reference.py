"""The operations guide's configuration reference is generated from the settings classes and
kept current; its commands exist."""

from __future__ import annotations

import re
import shlex
from importlib.metadata import entry_points
from pathlib import Path

import click
from click.testing import CliRunner
from pydantic import AliasChoices, BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from launcher import settings_reference as ref
from launcher.cli import main

SCRIPTS = ("wafer-edge", "wafer-fab", "wafer-cloud", "wafer-platform")
_COMMAND = re.compile(r"(?<![\w-])(wafer-(?:edge|fab|cloud|platform))(?![\w.:-])")


def test_the_guide_carries_the_generated_reference() -> None:
    problems = ref.problems(ref.DOC.read_text(encoding="utf-8"))
    assert not problems, (
        "docs/operations.md is stale; run `wafer-platform settings-reference --write`:\n"
        + "\n".join(problems)
    )


def test_every_setting_has_a_description() -> None:
    missing = [f"{s.env} ({s.source})" for s in ref.undocumented()]
    assert not missing, "settings without a description:\n" + "\n".join(missing)


def test_every_tier_and_nested_field_is_listed() -> None:
    names = {s.env for s in ref.all_settings()}
    for expected in (
        "EDGE_TRUSTED_KEYS_DIR",
        "FAB_DB_SCHEMA",
        "FAB_SYNC__HASH_KEY_FILE",
        "FAB_ALERTS__REVIEW_RATE_WARNING",
        "CLOUD_GATE__MIN_ACCURACY",
        "CLOUD_ROLLOUTS__WATCH_S",
        "CLOUD_DATA_DIR or WAFER_DATA_DIR",
        "WAFER_WORK_DIR",
    ):
        assert expected in names
    assert "FAB_SYNC" not in names  # a nested model is its fields, not a row of its own


class _Inner(BaseModel):
    depth: int = Field(default=3, ge=1, description="How deep.")
    password: str = "hunter2-inner"


class _Sample(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SAMPLE_", env_nested_delimiter="__")

    documented: float = Field(default=0.5, gt=0, le=1, description="A documented | piped one.")
    with_docstring: str = "x"
    """What the docstring says.

    Not this line."""
    bare: bool = False
    api_token: SecretStr = SecretStr("hunter2-token")
    session_secret: str = "hunter2-secret"
    folder: Path = ref.REPO / "configs"
    data_dir: Path | None = Field(
        default=None, validation_alias=AliasChoices("SAMPLE_DATA_DIR", "OTHER_DATA_DIR")
    )
    inner: _Inner = Field(default_factory=_Inner)


def test_fields_render_with_types_defaults_and_descriptions() -> None:
    rows = {s.env: s for s in ref.settings_of(_Sample)}
    assert list(rows) == [
        "SAMPLE_DOCUMENTED",
        "SAMPLE_WITH_DOCSTRING",
        "SAMPLE_BARE",
        "SAMPLE_API_TOKEN",
        "SAMPLE_SESSION_SECRET",
        "SAMPLE_FOLDER",
        "SAMPLE_DATA_DIR or OTHER_DATA_DIR",
        "SAMPLE_INNER__DEPTH",
        "SAMPLE_INNER__PASSWORD",
    ]
    documented = rows["SAMPLE_DOCUMENTED"]
    assert (documented.type, documented.default) == ("number (> 0, <= 1)", "`0.5`")
    assert documented.row().endswith("| A documented \\| piped one. |")
    assert rows["SAMPLE_WITH_DOCSTRING"].description == "What the docstring says."
    assert rows["SAMPLE_BARE"].description == ""
    assert ref.UNDOCUMENTED in rows["SAMPLE_BARE"].row()
    assert rows["SAMPLE_FOLDER"].default == "`<checkout>/configs`"  # the same on every machine
    assert rows["SAMPLE_INNER__DEPTH"].type == "integer (>= 1)"
    assert rows["SAMPLE_INNER__DEPTH"].source.endswith("_Inner.depth")


def test_a_secret_never_shows_its_default() -> None:
    settings = ref.settings_of(_Sample)
    secrets = {s.env for s in settings if s.secret}
    assert secrets == {"SAMPLE_API_TOKEN", "SAMPLE_SESSION_SECRET", "SAMPLE_INNER__PASSWORD"}
    rendered = "\n".join(s.row() for s in settings)
    assert "hunter2" not in rendered
    assert all(s.default.startswith("secret") for s in settings if s.secret)


def test_the_real_secrets_show_no_default() -> None:
    secrets = {s.env: s.default for s in ref.all_settings() if s.secret}
    assert {"EDGE_NODE_TOKEN", "FAB_SYNC__TOKEN", "FAB_SYNC__HASH_KEY", "FAB_API_TOKENS"} <= set(
        secrets
    )
    assert {"FAB_UI_SESSION_SECRET", "CLOUD_API_TOKEN"} <= set(secrets)
    assert set(secrets.values()) == {ref.SECRET_DEFAULT}


def test_problems_name_missing_stale_and_removed_variables() -> None:
    block = ref.render()
    edge_id = next(line for line in block.splitlines() if line.startswith("| `EDGE_NODE_ID`"))
    port = next(line for line in block.splitlines() if line.startswith("| `FAB_GRPC_PORT`"))
    changed = port.replace("`50051`", "`50052`") + "\n| `FAB_GONE` | string | unset | Removed. |"
    stale = block.replace(edge_id + "\n", "").replace(port, changed)
    document = f"# Guide\n\n{ref.START}\n{stale}{ref.END}\n"
    problems = ref.problems(document)
    assert problems[0] == "EDGE_NODE_ID: missing from the docs"
    assert problems[1] == "FAB_GONE: in the docs but not a setting"
    assert problems[2].startswith("FAB_GRPC_PORT: stale")
    assert len(problems) == 3
    assert ref.problems(ref.replace_block(document, ref.render())) == []
    assert ref.problems("# no block") == [f"no {ref.START} ... {ref.END} block"]


def test_the_cli_prints_checks_and_writes_the_reference(tmp_path: Path) -> None:
    runner = CliRunner()
    printed = runner.invoke(main, ["settings-reference"])
    assert printed.exit_code == 0, printed.output
    assert printed.output == ref.render()

    doc = tmp_path / "operations.md"
    doc.write_text(f"intro\n{ref.START}\nold\n{ref.END}\noutro\n", encoding="utf-8")
    stale = runner.invoke(main, ["settings-reference", "--check", "--doc", str(doc)])
    assert stale.exit_code == 1
    assert "EDGE_NODE_ID: missing from the docs" in stale.output

    written = runner.invoke(main, ["settings-reference", "--write", "--doc", str(doc)])
    assert written.exit_code == 0, written.output
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("intro\n") and text.endswith(f"{ref.END}\noutro\n")
    current = runner.invoke(main, ["settings-reference", "--check", "--doc", str(doc)])
    assert current.exit_code == 0, current.output


def test_every_command_in_the_guide_exists() -> None:
    scripts = {
        name: ep.load()
        for name in SCRIPTS
        for ep in entry_points(group="console_scripts", name=name)
    }
    commands = _guide_commands(ref.DOC.read_text(encoding="utf-8"))
    assert len(commands) > 30  # the extraction found the guide's commands
    problems = [p for argv in commands if (p := _command_problem(argv, scripts))]
    assert not problems, "\n".join(problems)


def _guide_commands(text: str) -> list[list[str]]:
    """Every ``wafer-*`` command line of the guide: in fenced blocks and in inline code."""
    pieces: list[str] = []
    prose = re.sub(r"```[a-z]*\n(.*?)```", lambda m: pieces.append(m[1]) or "", text, flags=re.S)
    blocks = [line for piece in pieces for line in piece.replace("\\\n", " ").splitlines()]
    spans = [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    commands = []
    for line in blocks + spans:
        for match in _COMMAND.finditer(line):
            rest = re.split(r"[|;&)#<>]", line[match.end() :], maxsplit=1)[0]
            commands.append([match[1], *shlex.split(rest)])
    return commands


def _command_problem(argv: list[str], scripts: dict[str, click.Command]) -> str:
    """Why ``argv`` names no existing subcommand or option ('' when it does)."""
    command, words = scripts[argv[0]], argv[1:]
    path = [argv[0]]
    while isinstance(command, click.Group):
        if not words or words[0].startswith("-"):
            return "" if len(path) > 1 or not words else f"{argv}: {path} needs a subcommand"
        sub = command.get_command(click.Context(command), words[0])
        if sub is None:
            return f"{argv}: {' '.join(path)} has no subcommand {words[0]!r}"
        path.append(words.pop(0))
        command = sub
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    options.add("--help")
    unknown = [
        w.split("=")[0] for w in words if w.startswith("-") and w.split("=")[0] not in options
    ]
    return f"{argv}: {' '.join(path)} has no option {unknown}" if unknown else ""

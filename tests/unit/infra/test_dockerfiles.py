"""infra/docker: multi-stage, non-root, health-checked images that install through the pins.

Images are not built here (no registry); a line parser reads each Dockerfile.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

TIERS = {"edge": "EDGE_", "fab": "FAB_", "cloud": "CLOUD_"}


@dataclass
class Stage:
    """One FROM stage: its base and instructions (continuation lines joined)."""

    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(text: str) -> list[Stage]:
    """Stages of a Dockerfile: comments dropped, ``\\`` continuations joined."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    stages: list[Stage] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, args = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stages.append(Stage(base=args.split()[0]))
        elif stages:
            stages[-1].instructions.append((keyword, " ".join(args.split())))
    return stages


def _pip_installs(stage: Stage) -> list[str]:
    commands = []
    for run in stage.all("RUN"):
        commands += [c for c in re.split(r"&&|;", run) if re.search(r"\bpip install\b", c)]
    return commands


@pytest.fixture(scope="module", params=sorted(TIERS))
def dockerfile(request: pytest.FixtureRequest, infra: SimpleNamespace) -> tuple[str, list]:
    path = infra.root / "docker" / f"{request.param}.Dockerfile"
    return request.param, parse(path.read_text())


def test_multi_stage(dockerfile: tuple[str, list[Stage]]) -> None:
    _, stages = dockerfile
    assert len(stages) >= 2
    runtime = stages[-1]
    assert any(c.startswith("--from=") for c in runtime.all("COPY")), "runtime copies no venv"
    assert _pip_installs(runtime) == [], "the runtime stage installs nothing itself"


def test_runs_as_a_user_that_is_not_root(dockerfile: tuple[str, list[Stage]]) -> None:
    _, stages = dockerfile
    users = stages[-1].all("USER")
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_health_checked_on_healthz(dockerfile: tuple[str, list[Stage]]) -> None:
    _, stages = dockerfile
    checks = stages[-1].all("HEALTHCHECK")
    assert len(checks) == 1 and "/healthz" in checks[0] and "urllib.request" in checks[0]


def test_installs_through_the_constraints(dockerfile: tuple[str, list[Stage]]) -> None:
    tier, stages = dockerfile
    installs = [c for s in stages for c in _pip_installs(s)]
    assert installs
    for command in installs:
        assert "-c constraints.txt" in command, command
    assert any(f"'.[{tier}]'" in c for c in installs), f"no install of the {tier} extra"


def test_edge_image_has_no_training_stack(infra: SimpleNamespace) -> None:
    stages = parse((infra.root / "docker" / "edge.Dockerfile").read_text())
    for command in [c for s in stages for c in _pip_installs(s)]:
        assert "torch" not in command and "cloud" not in command, command
        extras = re.findall(r"\.\[([^\]]*)\]", command)
        assert all(e == "edge" for e in extras), command


def test_cloud_torch_variant_is_a_build_arg(infra: SimpleNamespace) -> None:
    stages = parse((infra.root / "docker" / "cloud.Dockerfile").read_text())
    args = [a for s in stages for a in s.all("ARG")]
    assert "TORCH_VARIANT=cpu" in args
    torch = [c for s in stages for c in _pip_installs(s) if "torch" in c.split()]
    assert len(torch) == 1 and "${TORCH_INDEX_URL}" in torch[0]


def test_env_names_settings_fields(
    infra: SimpleNamespace, dockerfile: tuple[str, list[Stage]], monkeypatch: pytest.MonkeyPatch
) -> None:
    tier, stages = dockerfile
    env: dict[str, str] = {}
    for line in stages[-1].all("ENV"):
        env.update(re.findall(r"(\w+)=(\S+)", line))
    own = {k: v for k, v in env.items() if k.startswith(TIERS[tier])}
    assert own, "the image sets none of its tier's settings"
    assert infra.env_problems(env, TIERS[tier]) == []
    infra.build_settings(monkeypatch, TIERS[tier], own)


def test_default_command_is_the_tiers_server(dockerfile: tuple[str, list[Stage]]) -> None:
    tier, stages = dockerfile
    (cmd,) = stages[-1].all("CMD")
    assert cmd == f'["wafer-{tier}", "serve"]'

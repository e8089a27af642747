"""docker-compose.yml: valid Compose, real commands, real settings, declared dependencies.

Offline: the schema is the Compose Specification vendored in infra/schemas/; commands are
checked against the console scripts' click commands, environments against the settings classes.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
import yaml

# Third-party images: the binary their command may start with (None: the command is only
# arguments to the image's entrypoint, like Prometheus's flags).
IMAGE_BINARIES = {
    "postgres": "postgres",
    "redis": "redis-server",
    "prom/prometheus": None,
    "grafana/grafana": None,
}
_URL_PASSWORD = re.compile(r"://[^/@:]+:[^/@]+@")
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


@pytest.fixture(scope="module")
def compose(infra: SimpleNamespace) -> dict[str, Any]:
    with (infra.repo / "docker-compose.yml").open() as handle:
        loaded: dict[str, Any] = yaml.safe_load(handle)
    return loaded


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with every variable unset (the file's defaults)."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): _interpolate(str(v)) for k, v in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def _tier(service: dict[str, Any]) -> str | None:
    """The console script of a platform service (built from infra/docker), else None."""
    build = service.get("build")
    if build is None:
        return None
    dockerfile = build["dockerfile"] if isinstance(build, dict) else "Dockerfile"
    return {
        "infra/docker/edge.Dockerfile": "wafer-edge",
        "infra/docker/fab.Dockerfile": "wafer-fab",
        "infra/docker/cloud.Dockerfile": "wafer-cloud",
    }[dockerfile]


def test_matches_the_compose_specification(infra: SimpleNamespace, compose: dict) -> None:
    schema = json.loads((infra.root / "schemas" / "compose-spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose)
    ]
    assert errors == []


def test_schema_refuses_what_compose_refuses(infra: SimpleNamespace) -> None:
    # The check bites: a misspelt key and a bad depends_on condition are both errors.
    schema = json.loads((infra.root / "schemas" / "compose-spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    bad = {"services": {"a": {"image": "x", "dependson": ["b"]}}}
    assert list(validator.iter_errors(bad))
    bad = {"services": {"a": {"image": "x", "depends_on": {"b": {"condition": "healthy"}}}}}
    assert list(validator.iter_errors(bad))


def test_the_platform_is_all_there(compose: dict) -> None:
    services = compose["services"]
    images = {name: str(s.get("image", "")).split(":")[0] for name, s in services.items()}
    tiers = {name: _tier(s) for name, s in services.items()}
    assert "postgres" in images.values() and "redis" in images.values()
    assert "prom/prometheus" in images.values() and "grafana/grafana" in images.values()
    assert list(tiers.values()).count("wafer-edge") == 2
    assert list(tiers.values()).count("wafer-fab") == 1
    cloud = sorted(_command(s)[1] for n, s in services.items() if tiers[n] == "wafer-cloud")
    assert cloud == ["beat", "registry", "serve", "worker"]


def test_commands_are_console_scripts_with_real_subcommands(
    infra: SimpleNamespace, compose: dict
) -> None:
    problems: list[str] = []
    for name, service in compose["services"].items():
        command, tier = _command(service), _tier(service)
        assert "entrypoint" not in service, f"{name}: the image's entrypoint is kept"
        if tier is not None:
            if command[:1] != [tier]:
                problems.append(f"{name}: {command} does not start with {tier}")
            problems += [f"{name}: {p}" for p in infra.command_problems(command)]
            continue
        image = str(service["image"]).split(":")[0]
        assert image in IMAGE_BINARIES, f"{name}: image {image} not expected"
        binary = IMAGE_BINARIES[image]
        if command and not (command[0] == binary or command[0].startswith("--")):
            problems.append(f"{name}: {command} is neither {binary} nor entrypoint flags")
    assert problems == []


def test_environment_keys_are_settings_fields(infra: SimpleNamespace, compose: dict) -> None:
    problems: list[str] = []
    for name, service in compose["services"].items():
        tier = _tier(service)
        own = infra.script_tier[tier] if tier else None
        problems += [f"{name}: {p}" for p in infra.env_problems(_environment(service), own)]
    assert problems == []


def test_environment_values_build_the_settings(
    infra: SimpleNamespace, compose: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Values too: each platform service's environment (defaults interpolated) validates.
    for service in compose["services"].values():
        tier = _tier(service)
        if tier is None:
            continue
        prefix = infra.script_tier[tier]
        env = {k: v for k, v in _environment(service).items() if k.startswith(prefix)}
        infra.build_settings(monkeypatch, prefix, env)


def test_env_check_bites(infra: SimpleNamespace) -> None:
    problems = infra.env_problems(
        {"FAB_SYNC__HASH_KEY": "x", "FAB_SYNC__NO_SUCH": "x", "FAB_GRPC_PORT__X": "1"}, "FAB_"
    )
    assert len(problems) == 2
    assert infra.env_problems({"EDGE_NODE_ID": "a"}, "FAB_") != []
    assert infra.env_problems({"CLOUD_DATA_DIR": "/d", "CLOUD_GATE__MIN_ACCURACY": "1"}, None) == []
    assert infra.command_problems(["wafer-fab", "sync", "nope"]) != []
    assert infra.command_problems(["wafer-edge", "serve", "--no-such-flag"]) != []
    assert infra.command_problems(["wafer-cloud", "worker", "--concurrency", "0"]) != []
    assert infra.command_problems(["wafer-fab", "sync", "run"]) == []


def test_dependencies_wait_for_health(compose: dict) -> None:
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for target, rule in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            assert rule == {"condition": "service_healthy"}, f"{name} -> {target}: {rule}"
            check = services[target].get("healthcheck", {})
            assert check.get("test") and not check.get("disable"), f"{target}: no healthcheck"


def test_every_service_but_beat_has_a_healthcheck(compose: dict) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check is not None, f"{name}: no healthcheck"
        if check.get("disable"):
            assert _command(service)[1:2] == ["beat"], f"{name}: healthcheck disabled"


def test_state_lives_in_declared_named_volumes(compose: dict) -> None:
    declared = set(compose.get("volumes", {}))
    used: set[str] = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/")):
                # Bind mounts carry configuration only, never state.
                assert volume.endswith(":ro"), f"{name}: bind mount {volume} is writable"
                continue
            assert source in declared, f"{name}: volume {source} not declared"
            used.add(source)
    assert used == declared


def test_secrets_come_from_files_and_are_declared(compose: dict) -> None:
    declared = compose.get("secrets", {})
    for secret in declared.values():
        assert set(secret) == {"file"} and secret["file"].startswith("./infra/secrets/")
    used: set[str] = set()
    for name, service in compose["services"].items():
        for secret in service.get("secrets", []):
            source = secret if isinstance(secret, str) else secret["source"]
            assert source in declared, f"{name}: secret {source} not declared"
            used.add(source)
        for key, value in _environment(service).items():
            # A credential never sits in the file itself: passwords and keys are files.
            assert not re.search(r"PASSWORD$|TOKENS?$|SECRET$", key) or key.endswith("_FILE"), (
                f"{name}: {key} in the environment"
            )
            assert not _URL_PASSWORD.search(value), f"{name}: {key} has a password in its URL"
    assert used == set(declared)


def test_secret_files_are_read_through_real_settings(compose: dict) -> None:
    # Each file path a platform setting is given under /run/secrets is a mounted secret.
    for name, service in compose["services"].items():
        mounted = set()
        for secret in service.get("secrets", []):
            source = secret if isinstance(secret, str) else secret["source"]
            target = source if isinstance(secret, str) else secret.get("target", source)
            mounted.add(target if target.startswith("/") else f"/run/secrets/{target}")
        for key, value in _environment(service).items():
            if not value.startswith("/run/secrets/"):
                continue
            if key.endswith("_DIR"):
                assert any(m.startswith(value + "/") for m in mounted), f"{name}: {key}"
            else:
                assert value in mounted, f"{name}: {key}={value} is not a mounted secret"


def test_secret_files_are_git_ignored(infra: SimpleNamespace) -> None:
    ignore = (infra.root / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignore and "!README.md" in ignore

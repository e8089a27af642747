"""infra/k8s: every document valid for a fixed Kubernetes version, commands and settings real.

kubernetes-validate carries the API schemas of each Kubernetes release: offline and strict
(an unknown field is an error).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest
import yaml

KUBERNETES_VERSION = "1.33.0"
"""The release the manifests target (infra/k8s/README.md)."""
IMAGES = {"wafer-fab": "wafer-fab", "wafer-cloud": "wafer-cloud", "wafer-edge": "wafer-edge"}


def _documents(infra: SimpleNamespace) -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted((infra.root / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((f"{path.name}/{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


def _pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if "template" in spec:
        return [spec["template"]["spec"]]
    return []


@pytest.fixture(scope="module")
def documents(infra: SimpleNamespace) -> list[tuple[str, dict[str, Any]]]:
    return _documents(infra)


def test_every_document_is_valid_kubernetes(documents: list) -> None:
    assert len(documents) >= 10
    problems = []
    for where, doc in documents:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{where}: {'/'.join(map(str, exc.path))}: {exc.message}")
    assert problems == []


def test_the_validator_bites() -> None:
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replica": 2, "selector": {}, "template": {}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_containers_run_real_commands(infra: SimpleNamespace, documents: list) -> None:
    problems = []
    for where, doc in documents:
        for pod in _pod_specs(doc):
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                script = IMAGES[container["image"].split(":")[0].rsplit("/", 1)[-1]]
                command = container["command"] + container.get("args", [])
                if command[:1] != [script]:
                    problems.append(f"{where}: {command} is not {script}")
                problems += [f"{where}: {p}" for p in infra.command_problems(command)]
                probe = container.get("livenessProbe", {}).get("exec")
                if probe:
                    assert probe["command"][0] == "python", where
    assert problems == []


def test_environment_names_settings_fields(infra: SimpleNamespace, documents: list) -> None:
    config_maps = {
        doc["metadata"]["name"]: doc["data"] for _, doc in documents if doc["kind"] == "ConfigMap"
    }
    problems = []
    for where, doc in documents:
        for pod in _pod_specs(doc):
            for container in pod["containers"]:
                prefix = infra.script_tier[container["command"][0]]
                env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
                for source in container.get("envFrom", []):
                    env.update(config_maps[source["configMapRef"]["name"]])
                problems += [f"{where}: {p}" for p in infra.env_problems(env, prefix)]
    for name, data in config_maps.items():
        problems += [f"ConfigMap {name}: {p}" for p in infra.env_problems(data, None)]
    assert problems == []


def test_config_maps_build_the_settings(
    infra: SimpleNamespace, documents: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _, doc in documents:
        if doc["kind"] == "ConfigMap":
            prefix = next(
                p for p in ("FAB_", "CLOUD_", "EDGE_") if any(k.startswith(p) for k in doc["data"])
            )
            infra.build_settings(monkeypatch, prefix, doc["data"])


def test_the_shape_the_issue_asks_for(documents: list) -> None:
    by_kind: dict[tuple[str, str], dict[str, Any]] = {
        (doc["kind"], doc["metadata"]["name"]): doc for _, doc in documents
    }
    assert by_kind[("Deployment", "fab")]["spec"]["replicas"] == 2
    assert ("Service", "fab") in by_kind and ("ConfigMap", "fab-config") in by_kind
    assert by_kind[("Deployment", "cloud-beat")]["spec"]["replicas"] == 1
    for name in ("cloud-api", "cloud-worker", "mlflow"):
        assert ("Deployment", name) in by_kind
    for name in ("cloud-api", "mlflow"):
        assert ("Service", name) in by_kind
    hpa = by_kind[("HorizontalPodAutoscaler", "cloud-worker")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "cloud-worker"
    fab = by_kind[("Deployment", "fab")]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert fab[probe]["httpGet"]["path"] == "/healthz"
    database = next(e for e in fab["env"] if e["name"] == "FAB_DATABASE_URL")
    assert "secretKeyRef" in database["valueFrom"]


def test_pods_run_as_non_root(documents: list) -> None:
    for where, doc in documents:
        for pod in _pod_specs(doc):
            assert pod["securityContext"]["runAsNonRoot"] is True, where
            assert pod["securityContext"]["runAsUser"] != 0, where

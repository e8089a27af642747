"""``/models/*`` against the session's real `mlflow server` and the test's PostgreSQL schema,
with a shipped model imported (packaged, signed, registered) into the registry."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cloud.registry.importer import import_model_folder
from cloud.registry.registry import ModelRegistry, ModelVersion
from cloud.settings import CloudSettings
from cloud.signing import DEV_KEYS_DIR
from cloud.storage.db import Database
from wafercore.shipped import shipped_model_dir
from wafercore.signature import SignatureError, verify_artifact

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VERSION = "cnn-v1.0.0"
Headers = Callable[..., dict[str, str]]


@pytest.fixture
def registered(cloud_settings: CloudSettings, cloud_db: Database) -> ModelVersion:
    """A shipped model imported into the test's registry, as `wafer-cloud models import` does."""
    registry = ModelRegistry(cloud_settings, cloud_db)
    return import_model_folder(
        registry,
        cloud_settings,
        shipped_model_dir(VERSION),
        actor="cli:importer",
        reason="imported for the test",
    )


def test_a_registered_version_is_listed_with_its_report_and_history(
    api: httpx.Client, headers: Headers, registered: ModelVersion
) -> None:
    viewer = headers("viewer")
    listed = api.get("/models", headers=viewer)
    assert listed.status_code == 200
    assert [m["version"] for m in listed.json()] == [VERSION]
    assert listed.json()[0]["artifact_sha256"] == registered.artifact_sha256

    detail = api.get(f"/models/{VERSION}", headers=viewer)
    assert detail.status_code == 200
    body = detail.json()
    assert body["model"]["mlflow_version"] == registered.mlflow_version
    assert body["model"]["aliases"] == []
    assert body["report"]["model_version"] == VERSION
    assert body["model"]["metrics"]["macro_f1"] == pytest.approx(body["report"]["macro_f1"])
    assert [(e["action"], e["actor"]) for e in body["history"]] == [("registered", "cli:importer")]


def test_an_unknown_version_is_404_and_a_malformed_one_422(
    api: httpx.Client, headers: Headers
) -> None:
    viewer = headers("viewer")
    for path in ("/models/cnn-v9.9.9", "/models/cnn-v9.9.9/artifact", "/models/x/artifact.sig"):
        response = api.get(path, headers=viewer)
        assert response.status_code == 404, path
        assert response.json()["detail"][0]["type"] == "not_found"
    bad = api.get("/models/-bad version", headers=viewer)
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["path", "version"]


def test_the_artifact_downloaded_through_the_api_verifies_with_the_edges_verifier(
    api: httpx.Client,
    headers: Headers,
    registered: ModelVersion,
    cloud_settings: CloudSettings,
    tmp_path: Path,
) -> None:
    viewer = headers("viewer")
    artifact = api.get(f"/models/{VERSION}/artifact", headers=viewer)
    assert artifact.status_code == 200
    assert artifact.headers["content-type"] == "application/octet-stream"
    sha256 = artifact.headers["X-Artifact-SHA256"]
    assert sha256 == hashlib.sha256(artifact.content).hexdigest() == registered.artifact_sha256
    assert artifact.headers["ETag"] == f'"{sha256}"'
    signature = api.get(f"/models/{VERSION}/artifact.sig", headers=viewer)
    assert signature.status_code == 200 and len(signature.content) == 64
    key_id = artifact.headers["X-Signature-Key-Id"]
    assert key_id == signature.headers["X-Signature-Key-Id"] == cloud_settings.signing_key_id

    # What a node does (edge.ota): the signature over the sha256, against its pinned key.
    downloaded = tmp_path / "model.tar"
    downloaded.write_bytes(artifact.content)
    trusted = cloud_settings.work_dir / DEV_KEYS_DIR
    verify_artifact(downloaded, signature.content, key_id, trusted, expected_sha256=sha256)
    tampered = bytearray(artifact.content)
    tampered[len(tampered) // 2] ^= 0xFF
    downloaded.write_bytes(bytes(tampered))
    with pytest.raises(SignatureError, match="bad_signature"):
        verify_artifact(downloaded, signature.content, key_id, trusted)

    # The second download is the cached copy, and a client holding it is told so.
    again = api.get(f"/models/{VERSION}/artifact", headers=viewer)
    assert again.content == artifact.content
    unchanged = api.get(
        f"/models/{VERSION}/artifact", headers={**viewer, "If-None-Match": f'"{sha256}"'}
    )
    assert unchanged.status_code == 304 and unchanged.content == b""


def test_an_engineer_moves_candidate_an_admin_moves_champion_and_the_token_is_the_actor(
    api: httpx.Client, headers: Headers, registered: ModelVersion
) -> None:
    engineer = headers("ml-engineer", "eng-bo")
    admin = headers("admin", "adm-cy")
    url = f"/models/{VERSION}/aliases"

    spoofed = api.post(
        url, headers=engineer, json={"alias": "candidate", "reason": "r", "actor": "x"}
    )
    assert spoofed.status_code == 422
    assert spoofed.json()["detail"][0]["loc"] == ["body", "actor"]

    moved = api.post(url, headers=engineer, json={"alias": "candidate", "reason": "looks good"})
    assert moved.status_code == 200, moved.text
    assert moved.json()["aliases"] == ["candidate"]

    refused = api.post(url, headers=engineer, json={"alias": "champion", "reason": "ship it"})
    assert refused.status_code == 403
    assert "admin" in refused.json()["detail"][0]["msg"]

    promoted = api.post(url, headers=admin, json={"alias": "champion", "reason": "ship it"})
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["aliases"] == ["champion"]

    unknown = api.post(url, headers=admin, json={"alias": "boss", "reason": "r"})
    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["loc"] == ["body", "alias"]
    blank = api.post(url, headers=admin, json={"alias": "champion", "reason": "  "})
    assert blank.status_code == 422
    assert blank.json()["detail"][0]["loc"] == ["reason"]

    history = api.get(f"/models/{VERSION}", headers=admin).json()["history"]
    moves = [(e["action"], e["alias"], e["actor"], e["reason"]) for e in history[1:]]
    assert moves == [
        ("alias_set", "candidate", "eng-bo", "looks good"),
        ("alias_set", "champion", "adm-cy", "ship it"),
        ("alias_removed", "candidate", "adm-cy", "promoted to champion: ship it"),
    ]

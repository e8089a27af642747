"""``wafer-cloud keys`` and ``package``: a signed artifact of the real model verifies on a node."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cloud.cli import main
from cloud.settings import CloudSettings
from cloud.signing import ensure_keypair, golden_tokens, package_model
from wafercore.artifact import GOLDEN_FILE, MEMBERS, GoldenSet, check_golden, unpack_artifact
from wafercore.classes import NUM_CLASSES
from wafercore.runtime import ModelRuntime, file_sha256
from wafercore.signature import SignatureError, verify_artifact

MODEL_DIR = Path(__file__).resolve().parents[3] / "models" / "trm-v1.0.0"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    out = tmp_path / "keys"
    result = CliRunner().invoke(main, ["keys", "--out", str(out), "--key-id", "registry-1"])
    assert result.exit_code == 0, result.output
    return out


def test_keys_writes_a_private_key_only_its_owner_reads(keys: Path) -> None:
    assert sorted(p.name for p in keys.iterdir()) == ["registry-1.key", "registry-1.pub"]
    assert stat.S_IMODE((keys / "registry-1.key").stat().st_mode) == 0o600
    assert (keys / "registry-1.key").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert (keys / "registry-1.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    again = CliRunner().invoke(main, ["keys", "--out", str(keys), "--key-id", "registry-1"])
    assert again.exit_code == 1 and "exists" in again.output
    bad = CliRunner().invoke(main, ["keys", "--out", str(keys), "--key-id", "../escape"])
    assert bad.exit_code == 2 and "key id" in bad.output


def test_package_round_trip_verifies_and_passes_the_golden_check_on_a_node(
    keys: Path, tmp_path: Path
) -> None:
    out = tmp_path / "dist" / "trm-v1.0.0.tar"
    args = ["package", "--model", str(MODEL_DIR), "--key", str(keys / "registry-1.key")]
    result = CliRunner().invoke(main, [*args, "--key-id", "registry-1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    sha = file_sha256(out)
    assert "version: trm-v1.0.0" in result.output
    assert f"sha256:  {sha}" in result.output
    assert f"size:    {out.stat().st_size} bytes" in result.output
    signature = out.with_name(out.name + ".sig").read_bytes()
    assert len(signature) == 64

    # The node's side: verify with only the public key pinned, unpack, load, golden-check.
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "registry-1.pub").write_bytes((keys / "registry-1.pub").read_bytes())
    verify_artifact(out, signature, "registry-1", trusted, expected_sha256=sha)
    model = unpack_artifact(out, tmp_path / "candidate")
    assert sorted(p.name for p in model.iterdir()) == sorted(MEMBERS)
    golden = GoldenSet.load(model / GOLDEN_FILE)
    assert golden.tokens.shape[0] == 64
    runtime = ModelRuntime.load(model)
    assert runtime.version == "trm-v1.0.0"
    check_golden(runtime, golden)
    with pytest.raises(SignatureError):
        verify_artifact(out, signature[::-1], "registry-1", trusted)


def test_packaging_the_same_model_twice_gives_the_same_bytes(keys: Path, tmp_path: Path) -> None:
    first = package_model(
        MODEL_DIR, tmp_path / "a.tar", private_key=keys / "registry-1.key", key_id="registry-1"
    )
    second = package_model(
        MODEL_DIR, tmp_path / "b.tar", private_key=keys / "registry-1.key", key_id="registry-1"
    )
    assert first.sha256 == second.sha256 and first.size_bytes == second.size_bytes
    assert first.signature_path.read_bytes() == second.signature_path.read_bytes()  # Ed25519
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.tar",
        "a.tar.sig",
        "b.tar",
        "b.tar.sig",
        "keys",
    ]


def test_golden_wafers_cover_every_class_and_are_fixed() -> None:
    tokens = golden_tokens(18)
    assert tokens.shape == (18, 676) and tokens.dtype == np.uint8
    np.testing.assert_array_equal(tokens, golden_tokens(18))
    with pytest.raises(ValueError, match="one per class"):
        golden_tokens(NUM_CLASSES - 1)


def test_package_refuses_a_tampered_model(keys: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for name in ("model.onnx", "model.json"):
        (model / name).write_bytes((MODEL_DIR / name).read_bytes())
    with (model / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    out = tmp_path / "x.tar"
    key = ["--key", str(keys / "registry-1.key"), "--key-id", "registry-1"]
    result = CliRunner().invoke(main, ["package", "--model", str(model), *key, "--out", str(out)])
    assert result.exit_code == 2 and "sha256" in result.output
    assert not out.exists()


def test_ensure_keypair_generates_a_development_key_once_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = CloudSettings(work_dir=tmp_path / "cloud", signing_key_id="dev-1")
    with caplog.at_level(logging.WARNING, logger="cloud.signing"):
        private_key, key_id = ensure_keypair(settings)
    assert (private_key, key_id) == (tmp_path / "cloud" / "keys" / "dev-1.key", "dev-1")
    assert stat.S_IMODE(private_key.stat().st_mode) == 0o600
    assert "development key" in caplog.text
    pem = private_key.read_bytes()
    assert ensure_keypair(settings) == (private_key, "dev-1")
    assert private_key.read_bytes() == pem  # reused, not regenerated

    artifact = package_model(
        MODEL_DIR, tmp_path / "m.tar", private_key=private_key, key_id=key_id, golden=9
    )
    signature = artifact.signature_path.read_bytes()
    verify_artifact(artifact.path, signature, key_id, private_key.parent)


def test_ensure_keypair_uses_the_configured_key(keys: Path, tmp_path: Path) -> None:
    configured = CloudSettings(
        work_dir=tmp_path / "cloud",
        signing_key=keys / "registry-1.key",
        signing_key_id="registry-1",
    )
    assert ensure_keypair(configured) == (keys / "registry-1.key", "registry-1")
    assert not (tmp_path / "cloud" / "keys").exists()
    missing = configured.model_copy(update={"signing_key": tmp_path / "nope.key"})
    with pytest.raises(FileNotFoundError, match=r"nope\.key"):
        ensure_keypair(missing)

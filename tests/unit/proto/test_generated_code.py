"""The committed generated code is exactly what ``proto/generate.py`` produces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
PROTO_ROOT = REPO_ROOT / "proto"
GENERATOR = PROTO_ROOT / "generate.py"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")
FIX = "generated protobuf code is out of date: run `make proto` and commit the result"


def _generated_files(root: Path) -> set[str]:
    base = root / "waferplatform"
    return {
        p.relative_to(root).as_posix()
        for p in base.rglob("*")
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    }


def _generate(out: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        cwd=out,  # any directory: the generator must not depend on the caller's cwd
    )
    assert result.returncode == 0, f"proto/generate.py failed:\n{result.stderr}"


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("regenerated")
    _generate(out)
    return out


def test_every_proto_has_generated_code(regenerated: Path) -> None:
    protos = sorted(p.stem for p in (PROTO_ROOT / "waferplatform").rglob("*.proto"))
    assert protos, "no .proto files found"
    for stem in protos:
        for suffix in GENERATED_SUFFIXES:
            assert f"waferplatform/v1/{stem}{suffix}" in _generated_files(regenerated)


def test_no_generated_file_missing_or_extra(regenerated: Path) -> None:
    expected = _generated_files(regenerated)
    committed = _generated_files(PROTO_ROOT)
    assert committed == expected, (
        f"{FIX}\nmissing: {sorted(expected - committed)}\nextra: {sorted(committed - expected)}"
    )


def test_committed_code_is_byte_identical(regenerated: Path) -> None:
    differing = [
        rel
        for rel in sorted(_generated_files(regenerated))
        if not (PROTO_ROOT / rel).is_file()
        or (PROTO_ROOT / rel).read_bytes() != (regenerated / rel).read_bytes()
    ]
    assert not differing, f"{FIX}\ndiffering: {differing}"


def test_regeneration_replaces_stale_files_and_keeps_hand_written_ones(
    tmp_path: Path, regenerated: Path
) -> None:
    package = tmp_path / "waferplatform" / "v1"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("# hand-written\n")
    (package / "removed_pb2.py").write_text("# generated from a .proto that no longer exists\n")
    (package / "fab_pb2.py").write_text("# outdated\n")

    _generate(tmp_path)

    assert (package / "__init__.py").read_text() == "# hand-written\n"
    assert not (package / "removed_pb2.py").exists()
    assert (package / "fab_pb2.py").read_bytes() == (
        regenerated / "waferplatform" / "v1" / "fab_pb2.py"
    ).read_bytes()

"""The artifact layout: reproducible packing, safe unpacking, the golden set and its check."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from wafercore.artifact import (
    GOLDEN_FILE,
    MAX_MEMBER_BYTES,
    MEMBERS,
    OPTIONAL_MEMBERS,
    ArtifactError,
    GoldenCheckError,
    GoldenSet,
    check_golden,
    unpack_artifact,
    write_artifact,
)
from wafercore.classes import NUM_CLASSES
from wafercore.encoding import TOKENS
from wafercore.novelty import NOVELTY_FILE, NOVELTY_MANIFEST_FILE
from wafercore.runtime import MANIFEST_FILE, MODEL_FILE, ModelRuntime, RuntimeResult

MODEL_DIR = Path(__file__).resolve().parents[3] / "models" / "trm-v1.0.0"


def _golden(n: int = 12, seed: int = 0) -> GoldenSet:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, NUM_CLASSES))
    probabilities = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    return GoldenSet(
        tokens=rng.integers(0, 3, size=(n, TOKENS), dtype=np.uint8),
        probabilities=probabilities,
        prediction=probabilities.argmax(axis=1).astype(np.int64),
    )


def _members() -> dict[str, bytes | Path]:
    return {MODEL_FILE: b"graph" * 100, MANIFEST_FILE: b"{}", GOLDEN_FILE: _golden().to_bytes()}


def _raw_tar(path: Path, entries: list[tarfile.TarInfo], data: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for info in entries:
            payload = data.get(info.name)
            if payload is not None:
                info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _valid_entries() -> tuple[list[tarfile.TarInfo], dict[str, bytes]]:
    data = {name: bytes(value) for name, value in _members().items() if isinstance(value, bytes)}
    return [_file(name) for name in MEMBERS], data


def test_packing_is_reproducible_and_unpacks_to_the_members(tmp_path: Path) -> None:
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    write_artifact(first, _members())
    write_artifact(second, _members())
    assert first.read_bytes() == second.read_bytes()
    out = unpack_artifact(first, tmp_path / "model")
    assert sorted(p.name for p in out.iterdir()) == sorted(MEMBERS)
    assert (out / MODEL_FILE).read_bytes() == b"graph" * 100
    loaded = GoldenSet.load(out / GOLDEN_FILE)
    np.testing.assert_array_equal(loaded.probabilities, _golden().probabilities)


def test_packing_refuses_other_members(tmp_path: Path) -> None:
    members = _members()
    del members[GOLDEN_FILE]
    with pytest.raises(ArtifactError, match=r"\['golden.npz'\] are missing"):
        write_artifact(tmp_path / "a.tar", members)
    with pytest.raises(ArtifactError, match=r"\['notes.txt'\] are not among"):
        write_artifact(tmp_path / "a.tar", {**_members(), "notes.txt": b"hi"})
    with pytest.raises(ArtifactError, match="come together"):
        write_artifact(tmp_path / "a.tar", {**_members(), NOVELTY_FILE: b"graph"})


def test_a_novelty_model_travels_beside_the_classifier(tmp_path: Path) -> None:
    members = {**_members(), NOVELTY_FILE: b"vae" * 10, NOVELTY_MANIFEST_FILE: b"{}"}
    write_artifact(tmp_path / "a.tar", members)
    out = unpack_artifact(tmp_path / "a.tar", tmp_path / "model")
    assert sorted(p.name for p in out.iterdir()) == sorted([*MEMBERS, *OPTIONAL_MEMBERS])
    assert (out / NOVELTY_FILE).read_bytes() == b"vae" * 10


def _absolute() -> tarfile.TarInfo:
    return _file("/etc/model.json")


def _parent() -> tarfile.TarInfo:
    return _file("../model.json")


def _symlink() -> tarfile.TarInfo:
    info = _file(MANIFEST_FILE)
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info


def _hardlink() -> tarfile.TarInfo:
    info = _file(MANIFEST_FILE)
    info.type, info.linkname = tarfile.LNKTYPE, MODEL_FILE
    return info


def _folder() -> tarfile.TarInfo:
    info = _file("models")
    info.type = tarfile.DIRTYPE
    return info


def _fifo() -> tarfile.TarInfo:
    info = _file(MANIFEST_FILE)
    info.type = tarfile.FIFOTYPE
    return info


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_absolute, "absolute path"),
        (_parent, "leaves the artifact"),
        (_symlink, "is a link"),
        (_hardlink, "is a link"),
        (_folder, "not a regular file"),
        (_fifo, "not a regular file"),
        (lambda: _file("run.sh"), "not one of"),
        (lambda: _file("sub/model.json"), "not one of"),
    ],
)
def test_unsafe_members_are_refused_before_anything_is_written(
    tmp_path: Path, make: Callable[[], tarfile.TarInfo], message: str
) -> None:
    entries, data = _valid_entries()
    bad = make()
    if bad.isreg():
        data = {**data, bad.name: b"#!/bin/sh\n"}
    artifact = _raw_tar(tmp_path / "bad.tar", [*entries[:2], bad], data)
    with pytest.raises(ArtifactError, match=message):
        unpack_artifact(artifact, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar"]


def test_repeated_and_missing_members_are_refused(tmp_path: Path) -> None:
    entries, data = _valid_entries()
    twice = _raw_tar(tmp_path / "twice.tar", [*entries, _file(MANIFEST_FILE)], data)
    with pytest.raises(ArtifactError, match=r"more than once"):
        unpack_artifact(twice, tmp_path / "out")
    short = _raw_tar(tmp_path / "short.tar", entries[:2], data)
    with pytest.raises(ArtifactError, match=r"golden.npz.*missing"):
        unpack_artifact(short, tmp_path / "out")


def test_an_oversized_member_is_refused_from_its_header(tmp_path: Path) -> None:
    entries, data = _valid_entries()
    data[MANIFEST_FILE] = b" " * (MAX_MEMBER_BYTES[MANIFEST_FILE] + 1)
    artifact = _raw_tar(tmp_path / "big.tar", entries, data)
    with pytest.raises(ArtifactError, match=r"model.json.*at most"):
        unpack_artifact(artifact, tmp_path / "out")


def test_a_truncated_or_foreign_file_is_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.tar"
    write_artifact(good, _members())
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(good.read_bytes()[:1500])
    with pytest.raises(ArtifactError):
        unpack_artifact(truncated, tmp_path / "out-1")
    gzip = tmp_path / "compressed.tar.gz"
    with tarfile.open(gzip, "w:gz") as archive:
        archive.add(good, arcname=MODEL_FILE)
    with pytest.raises(ArtifactError, match=r"not a valid tar"):
        unpack_artifact(gzip, tmp_path / "out-2")


def test_a_golden_set_with_wrong_shapes_is_refused(tmp_path: Path) -> None:
    golden = _golden()
    with pytest.raises(ArtifactError, match=r"probabilities"):
        GoldenSet(golden.tokens, golden.probabilities[:, :5], golden.prediction)
    with pytest.raises(ArtifactError, match=r"tokens"):
        GoldenSet(golden.tokens + 3, golden.probabilities, golden.prediction)
    path = tmp_path / GOLDEN_FILE
    np.savez(path, tokens=golden.tokens, probabilities=golden.probabilities)
    with pytest.raises(ArtifactError, match=r"lacks arrays \['prediction'\]"):
        GoldenSet.load(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match=r"not a readable npz"):
        GoldenSet.load(path)


@pytest.fixture(scope="module")
def runtime() -> ModelRuntime:
    return ModelRuntime.load(MODEL_DIR)


def _own_golden(runtime: ModelRuntime) -> GoldenSet:
    tokens = _golden(n=32, seed=1).tokens
    return GoldenSet.from_result(tokens, runtime.predict(tokens))


def test_the_model_passes_its_own_golden_set(runtime: ModelRuntime) -> None:
    check_golden(runtime, _own_golden(runtime))


def test_probabilities_off_by_more_than_the_tolerance_fail(runtime: ModelRuntime) -> None:
    golden = _own_golden(runtime)
    shifted = golden.probabilities.copy()
    shifted[3, 0] += 5e-4
    with pytest.raises(GoldenCheckError, match=r"1 of 32 golden wafers"):
        check_golden(runtime, GoldenSet(golden.tokens, shifted, golden.prediction))
    check_golden(runtime, GoldenSet(golden.tokens, shifted, golden.prediction), atol=1e-3)


def test_a_different_prediction_fails(runtime: ModelRuntime) -> None:
    golden = _own_golden(runtime)
    prediction = golden.prediction.copy()
    prediction[0] = (prediction[0] + 1) % NUM_CLASSES
    with pytest.raises(GoldenCheckError, match=r"1 have a different prediction"):
        check_golden(runtime, GoldenSet(golden.tokens, golden.probabilities, prediction))


class _Fixed:
    """A predictor that answers fixed probabilities (a candidate that behaves differently)."""

    novelty = None

    def __init__(self, probabilities: npt.NDArray[np.float32]) -> None:
        self._p = probabilities

    def prepare(self, maps: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.uint8]:
        return np.stack(maps)

    def predict(self, inputs: npt.ArrayLike) -> RuntimeResult:
        size = len(self._p)
        prediction = self._p.argmax(axis=1).astype(np.int64)
        return RuntimeResult(
            probabilities=self._p,
            prediction=prediction,
            confidence=self._p.max(axis=1),
            steps=np.ones(size, dtype=np.int64),
            halt=np.ones(size, dtype=np.float32),
            flagged=np.zeros(size, dtype=bool),
        )


def test_a_near_tie_may_break_either_way_but_nothing_else_may() -> None:
    tokens = np.zeros((1, TOKENS), dtype=np.uint8)
    tie = np.array([[0.45, 0.45004] + [0.1 / 7] * 7], dtype=np.float32)
    observed = tie.copy()
    observed[0, 0] += 0.00008  # now class 0 wins, by less than the tolerance
    golden = GoldenSet(tokens, tie, np.array([1]))
    check_golden(_Fixed(observed), golden)
    other = np.array([[0.1 / 7] * 7 + [0.45, 0.45]], dtype=np.float32)
    with pytest.raises(GoldenCheckError):
        check_golden(_Fixed(other), golden)


def test_a_novelty_model_must_reproduce_its_golden_scores(
    tmp_path: Path, novelty_model: Callable[..., Path]
) -> None:
    runtime = ModelRuntime.load(novelty_model(tmp_path / "m"))
    assert runtime.novelty is not None
    tokens = _golden(n=16, seed=2).tokens
    maps = list(tokens.reshape(-1, 26, 26))
    scores = runtime.novelty.score(runtime.novelty.prepare(maps)).score
    answer = runtime.predict(runtime.prepare(maps))
    check_golden(runtime, GoldenSet.from_result(tokens, answer, scores))
    shifted = scores.copy()
    shifted[5] += 1e-3
    with pytest.raises(GoldenCheckError, match=r"1 of 16 golden wafers have novelty scores"):
        check_golden(runtime, GoldenSet.from_result(tokens, answer, shifted))
    with pytest.raises(GoldenCheckError, match="has novelty model"):
        check_golden(runtime, GoldenSet.from_result(tokens, answer))

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cloud.cli import main
from cloud.settings import CloudSettings
from cloud.training.config import TrainConfig
from cloud.training.pipeline import load_data
from cloud.training.pseudo import PseudoLabels, select_balanced, teacher_predictions
from wafercore.classes import NUM_CLASSES
from wafercore.dataset import UNLABELLED
from wafercore.model_input import InputSpec
from wafercore.readers.npz import file_sha256, read_npz, write_npz
from wafercore.runtime import ModelRuntime
from wafercore.second_look import VIEWS, dihedral
from wafercore.synthetic import generate_dataset

AREA = InputSpec(size=16, resample="area", channels=("fail", "die"))


@pytest.fixture(scope="module")
def teacher_dir(
    tmp_path_factory: pytest.TempPathFactory, area_classifier: Callable[..., Path]
) -> Path:
    """A tiny untrained CNN on a 16x16 area input whose answers differ from view to view."""
    return area_classifier(tmp_path_factory.mktemp("teacher"), version="cnn-v0.0.7", pooled=False)


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unlabelled npz file of 45 synthetic maps (5 per class, labels removed): the first 20
    of a lot of their own, the others of lot SYN-0, which the labelled files below also have."""
    dataset = generate_dataset(5, np.random.default_rng(3), sizes=(20, 40))
    dataset.labels[:] = UNLABELLED
    dataset.lot = np.where(np.arange(len(dataset)) < 20, "U-1", "SYN-0")
    path = tmp_path_factory.mktemp("stream") / "unlabelled.npz"
    write_npz(dataset, path)
    return path


def _labels(n: int = 6) -> PseudoLabels:
    return PseudoLabels(
        index=np.arange(0, 2 * n, 2, dtype=np.int64),
        label=np.arange(n, dtype=np.int64) % NUM_CLASSES,
        confidence=np.linspace(0.5, 1.0, n, dtype=np.float32),
        source_sha256="a" * 64,
        teacher="cnn-v0.0.7",
    )


def test_selection_keeps_confident_maps_and_caps_each_class_at_its_most_confident() -> None:
    label = np.array([0, 0, 0, 0, 1, 1, 2], dtype=np.int64)
    confidence = np.array([0.99, 0.5, 0.95, 0.97, 0.91, 0.89, 0.9], dtype=np.float32)
    kept = select_balanced(label, confidence, threshold=0.9, max_per_class=2)
    # None keeps its two most confident of three (rows 0 and 3), class 1 its one above 0.9.
    assert kept.tolist() == [0, 3, 4, 6]
    assert select_balanced(label, confidence, threshold=0.9, max_per_class=None).tolist() == [
        0,
        2,
        3,
        4,
        6,
    ]


def test_selection_breaks_ties_by_row_so_it_is_reproducible() -> None:
    label = np.zeros(5, dtype=np.int64)
    confidence = np.full(5, 0.95, dtype=np.float32)
    assert select_balanced(label, confidence, threshold=0.9, max_per_class=3).tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("threshold", "cap", "message"), [(0.0, None, "threshold"), (0.9, 0, "max_per_class")]
)
def test_selection_rejects_impossible_settings(threshold: float, cap: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select_balanced(
            np.zeros(2, np.int64), np.ones(2, np.float32), threshold=threshold, max_per_class=cap
        )


def test_pseudo_labels_survive_a_round_trip_and_a_stricter_choice(tmp_path: Path) -> None:
    labels = _labels()
    loaded = PseudoLabels.load(labels.save(tmp_path / "deep" / "p.npz"))
    assert loaded.index.tolist() == labels.index.tolist()
    assert loaded.label.tolist() == labels.label.tolist()
    assert loaded.teacher == "cnn-v0.0.7" and loaded.source_sha256 == "a" * 64
    strict = loaded.kept(threshold=0.85, max_per_class=None)
    assert strict.confidence.min() >= 0.85 and len(strict.index) == 2
    assert strict.index.tolist() == [8, 10]


def test_a_file_that_is_not_pseudo_labels_is_refused_by_name(tmp_path: Path) -> None:
    np.savez(tmp_path / "other.npz", index=np.arange(3))
    with pytest.raises(ValueError, match="not a pseudo-label file"):
        PseudoLabels.load(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="class id"):
        PseudoLabels(np.arange(1), np.array([NUM_CLASSES]), np.ones(1, np.float32), "a", "t")


def test_pseudo_labels_only_apply_to_the_file_they_were_made_on(stream: Path) -> None:
    dataset = read_npz(stream)
    labels = _labels()
    with pytest.raises(ValueError, match="sha256"):
        labels.dataset(dataset, file_sha256(stream))
    own = PseudoLabels(labels.index, labels.label, labels.confidence, file_sha256(stream), "t")
    kept = own.dataset(dataset, file_sha256(stream))
    assert kept.labels.tolist() == labels.label.tolist()
    assert np.array_equal(kept.map(1), dataset.map(2))
    past = PseudoLabels(
        np.array([len(dataset)]),
        np.zeros(1, np.int64),
        np.ones(1, np.float32),
        file_sha256(stream),
        "t",
    )
    with pytest.raises(ValueError, match="past the file's end"):
        past.dataset(dataset, file_sha256(stream))


def test_the_teacher_averages_the_eight_views_of_doubtful_maps(
    teacher_dir: Path, stream: Path
) -> None:
    runtime = ModelRuntime.load(teacher_dir)
    dataset = read_npz(stream)
    inputs = runtime.prepare(list(dataset.maps()))
    first = runtime.predict(inputs).probabilities
    averaged = np.mean(
        [runtime.predict(dihedral(inputs, AREA, k)).probabilities for k in range(VIEWS)], axis=0
    )
    label, confidence = teacher_predictions(runtime, dataset, look_below=1.01)
    assert label.tolist() == averaged.argmax(1).tolist()
    assert np.allclose(confidence, averaged.max(1), atol=1e-5)
    label, confidence = teacher_predictions(runtime, dataset, look_below=0.0)
    assert label.tolist() == first.argmax(1).tolist()
    assert not np.allclose(first, averaged, atol=1e-3)  # the views do disagree


def test_pseudo_label_command_feeds_a_self_training_run(
    teacher_dir: Path, stream: Path, tmp_path: Path
) -> None:
    env = {"CLOUD_WORK_DIR": str(tmp_path / "work"), "CLOUD_DATA_DIR": str(stream.parent)}
    args = ["pseudo-label", "--model", str(teacher_dir), "--unlabelled", str(stream)]
    capped = tmp_path / "capped.npz"
    done = CliRunner().invoke(
        main, [*args, "--threshold", "0.05", "--max-per-class", "4", "--out", str(capped)], env=env
    )
    assert done.exit_code == 0, done.output
    assert (
        0 < len(PseudoLabels.load(capped).index)
        and max(PseudoLabels.load(capped).class_counts()) <= 4
    )
    # Nine classes: the top probability is at least 1/9, so a 0.05 bar keeps every map.
    done = CliRunner().invoke(main, [*args, "--threshold", "0.05"], env=env)
    assert done.exit_code == 0, done.output
    written = tmp_path / "work" / "pseudo" / "cnn-v0.0.7.npz"
    labels = PseudoLabels.load(written)
    assert str(written) in done.output and "45 maps kept" in done.output
    assert labels.index.tolist() == list(range(45))
    assert labels.source_sha256 == file_sha256(stream)

    labelled = tmp_path / "labelled.npz"
    write_npz(generate_dataset(10, np.random.default_rng(4), sizes=(20, 40)), labelled)
    config = TrainConfig.model_validate(
        {
            "kind": "cnn",
            "version": "cnn-v0.0.8",
            "data": {"path": str(labelled), "protocol": "random", "val_fraction": 0.2},
            "pseudo": {"labels": "pseudo/cnn-v0.0.7.npz", "threshold": 0.05},
        }
    )
    settings = CloudSettings(work_dir=tmp_path / "work", data_dir=stream.parent)
    data = load_data(config, settings)
    without = load_data(config.model_copy(update={"pseudo": None}), settings)
    assert "SYN-0" in data.val.raw.lot or "SYN-0" in data.test.raw.lot
    added = len(data.train_raw) - len(without.train_raw)
    assert added == 20  # the 25 maps of lot SYN-0, which the run is judged on, stay out
    assert data.train_raw.labels[-added:].tolist() == labels.label[:20].tolist()
    assert set(data.train_raw.lot[-added:]) == {"U-1"}
    assert data.provenance["pseudo"]["teacher"] == "cnn-v0.0.7"
    assert data.provenance["pseudo"]["dropped_judged_lots"] == 25


def test_pseudo_labels_are_for_classifiers() -> None:
    with pytest.raises(ValueError, match="pseudo is for trained classifiers"):
        TrainConfig.model_validate(
            {"kind": "rules", "version": "rules-v0.0.1", "pseudo": {"labels": "p.npz"}}
        )


def test_training_names_the_pseudo_field_when_its_file_is_missing_or_foreign(
    stream: Path, tmp_path: Path
) -> None:
    labelled = tmp_path / "labelled.npz"
    write_npz(generate_dataset(2, np.random.default_rng(4), sizes=(20, 30)), labelled)
    config = tmp_path / "self.yaml"
    config.write_text(
        "kind: cnn\nversion: cnn-v0.0.9\n"
        f"data: {{path: {labelled}, protocol: random, val_fraction: 0.2}}\n"
        f"pseudo: {{labels: pseudo/none.npz, path: {stream}}}\n"
    )
    env = {"CLOUD_WORK_DIR": str(tmp_path / "work")}
    done = CliRunner().invoke(main, ["train", "--config", str(config)], env=env)
    assert done.exit_code == 1 and "pseudo.labels: no file" in done.output
    assert "Traceback" not in done.output
    _labels().save(tmp_path / "work" / "pseudo" / "none.npz")  # made on another file
    done = CliRunner().invoke(main, ["train", "--config", str(config)], env=env)
    assert done.exit_code == 1 and "pseudo.labels: pseudo-labels were made on" in done.output

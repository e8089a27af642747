from pathlib import Path

import numpy as np
import pytest
import torch

from cloud.training.config import SemiConfig, TrainConfig
from cloud.training.data import RARE_CLASSES, Part, PreparedData
from cloud.training.semi import FlexThresholds
from cloud.training.trainer import (
    BEST,
    LAST,
    TrainProgress,
    load_checkpoint_model,
    lr_lambda,
    train,
)
from wafercore.synthetic import generate_dataset


def _data() -> PreparedData:
    train_raw = generate_dataset(8, np.random.default_rng(1), sizes=(20, 40))
    val_raw = generate_dataset(4, np.random.default_rng(2), sizes=(20, 40))
    val = Part.of(val_raw)
    return PreparedData(
        train_raw=train_raw,
        train=Part.of(train_raw),
        val=val,
        test=val,
        provenance={"path": "synthetic", "sha256": "0" * 64, "protocol": "official", "seed": 0},
    )


def _config(epochs: int, kind: str = "trm") -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "kind": kind,
            "version": f"{kind}-v0.0.1",
            "device": "cpu",
            "trm": {"dim": 16, "heads": 2, "patch": 4, "n": 1, "T": 2, "n_sup": 2},
            "cnn": {"channels": [4, 8, 8]},
            "optim": {
                "epochs": epochs,
                "samples_per_epoch": 48,
                "batch_size": 16,
                "warmup_steps": 2,
                "sampling": "balanced",
            },
        }
    )


def test_checkpoints_carry_config_code_version_and_provenance(tmp_path: Path) -> None:
    result = train(_config(2), _data(), tmp_path)
    assert (tmp_path / LAST).exists() and (tmp_path / BEST).exists()
    assert [h["epoch"] for h in result.history] == [1, 2]
    model, meta = load_checkpoint_model(tmp_path / BEST)
    assert meta["config"]["version"] == "trm-v0.0.1"
    assert meta["data"]["sha256"] == "0" * 64
    assert meta["code_version"]
    assert not model.training
    assert len(result.history[0]["val_step_accuracy"]) == 2


def test_resume_continues_exactly_where_the_run_stopped(tmp_path: Path) -> None:
    data = _data()
    train(_config(2), data, tmp_path / "straight")
    train(_config(2), data, tmp_path / "split", stop_after_epochs=1)
    assert torch.load(tmp_path / "split" / LAST, weights_only=False)["epoch"] == 0
    train(_config(2), data, tmp_path / "split", resume=True)
    straight = torch.load(tmp_path / "straight" / LAST, weights_only=False)
    resumed = torch.load(tmp_path / "split" / LAST, weights_only=False)
    assert resumed["global_step"] == straight["global_step"] == 6
    for key in straight["ema"]:
        assert torch.equal(straight["ema"][key], resumed["ema"][key]), key


def test_resume_refuses_another_config(tmp_path: Path) -> None:
    data = _data()
    train(_config(1), data, tmp_path)
    with pytest.raises(ValueError, match="another config"):
        train(_config(2), data, tmp_path, resume=True)


def test_synthetic_rare_class_maps_join_the_training_set(tmp_path: Path) -> None:
    base = _config(1)
    config = base.model_copy(
        update={"augment": base.augment.model_copy(update={"synthetic_per_class": 3})}
    )
    train(config, _data(), tmp_path)
    _, meta = load_checkpoint_model(tmp_path / LAST)
    assert meta["data"]["synthetic_rows"] == 3 * len(RARE_CLASSES)
    train(_config(1), _data(), tmp_path / "none")
    _, meta = load_checkpoint_model(tmp_path / "none" / LAST)
    assert meta["data"]["synthetic_rows"] == 0


def test_cnn_trains_through_the_same_loop(tmp_path: Path) -> None:
    result = train(_config(1, "cnn"), _data(), tmp_path)
    assert result.history[0]["val_step_accuracy"]


def test_learning_rate_warms_up_then_decays() -> None:
    values = [lr_lambda(s, total=100, warmup=10, min_ratio=0.1) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[50] < values[20] and values[-1] == pytest.approx(0.1, abs=1e-3)


def test_semi_supervised_training_learns_from_pseudo_labels_and_resumes_exactly(
    tmp_path: Path,
) -> None:
    data = _data()
    data.unlabelled = generate_dataset(6, np.random.default_rng(9), sizes=(20, 40))
    base = _config(2, kind="cnn")
    config = base.model_copy(
        # An untrained teacher is barely above 1/9 sure: a low bar, so pseudo-labels are taken.
        update={"semi": SemiConfig(threshold=0.115, ratio=1, weight=1.0, warmup_epochs=1)}
    )
    straight = train(config, data, tmp_path / "straight")
    first, second = straight.history
    assert first["semi_mask_rate"] == 0.0  # the warm-up epoch is supervised only
    assert second["semi_mask_rate"] > 0 and second["train_semi_loss"] > 0  # pseudo-labels used
    train(config, data, tmp_path / "split", stop_after_epochs=1)
    train(config, data, tmp_path / "split", resume=True)
    one = torch.load(tmp_path / "straight" / LAST, weights_only=False)
    two = torch.load(tmp_path / "split" / LAST, weights_only=False)
    assert np.array_equal(one["semi"]["status"], two["semi"]["status"])
    for key in one["ema"]:
        assert torch.equal(one["ema"][key], two["ema"][key]), key


def test_flex_thresholds_lower_the_bar_for_classes_the_teacher_is_rarely_sure_of() -> None:
    thresholds = FlexThresholds(1000, 0.9, floor=0.1)
    assert thresholds.per_class().tolist() == [0.9] * 9  # nothing confident yet: the base
    idx = np.arange(10)
    pseudo = np.array([0] * 8 + [1, 1])
    thresholds.update(idx, pseudo, np.full(10, 0.95))
    bar = thresholds.per_class()
    # Not lowered by the 990 maps never seen (FlexMatch's warm-up would keep every bar near 0).
    assert bar[0] == pytest.approx(0.9)  # the most confident class keeps the base threshold
    assert bar[1] == pytest.approx(0.9 * 0.25 / 1.75)
    assert bar[2] == pytest.approx(0.1)  # never confident: the floor, not 0
    assert FlexThresholds(10, 0.9, floor=0.7).per_class()[1:].min() >= 0.7
    assert FlexThresholds(10, 0.9, flex=False).per_class().tolist() == [0.9] * 9


class _StopRequestedError(Exception):
    pass


def test_progress_is_reported_per_batch_and_epoch_and_can_stop_the_run(tmp_path: Path) -> None:
    data = _data()
    seen: list[TrainProgress] = []

    def stop_in_epoch_two(progress: TrainProgress) -> None:
        seen.append(progress)
        if progress.epoch == 1 and progress.batch == 2:
            raise _StopRequestedError

    with pytest.raises(_StopRequestedError):
        train(_config(3), data, tmp_path, progress=stop_in_epoch_two)
    assert (seen[0].epoch, seen[0].batch, seen[0].start_epoch) == (0, 0, 0)
    assert [(p.batch, p.batches) for p in seen[1:4]] == [(1, 3), (2, 3), (3, 3)]
    done = [p for p in seen if p.epoch_done]
    assert len(done) == 1 and done[0].record is not None and done[0].record["epoch"] == 1
    assert done[0].fraction == pytest.approx(1 / 3)
    # Stopped mid-epoch: the last checkpoint is the finished epoch; a resume starts after it.
    assert torch.load(tmp_path / LAST, weights_only=False)["epoch"] == 0
    resumed: list[TrainProgress] = []
    result = train(_config(3), data, tmp_path, resume=True, progress=resumed.append)
    assert resumed[0].start_epoch == 1 and resumed[0].fraction == pytest.approx(1 / 3)
    assert [p.epoch + 1 for p in resumed if p.epoch_done] == [2, 3]
    assert [h["epoch"] for h in result.history] == [1, 2, 3]

"""Training on two processes with DDP (gloo on CPU), started by torchrun as in production.

``wafer-cloud train`` under torchrun: both ranks end with identical weights (every epoch's
record holds each rank's digest of model and EMA), training moved them, rank 0 alone writes
the checkpoints and the model. Run as a script by torchrun, this file is also the driver of
the resume check: a 2-process run stopped after one epoch and resumed ends bit for bit where
an uninterrupted 2-process run ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from cloud.training.config import TrainConfig
from cloud.training.data import Part, PreparedData
from cloud.training.distributed import DistributedContext, process_group, state_digest
from cloud.training.trainer import BEST, LAST, build_model, seed_everything, train
from wafercore.readers.npz import write_npz
from wafercore.synthetic import generate_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RANKS = 2
TORCHRUN_S = 300.0
"""Two fresh Python processes importing torch and training on a loaded 2-core machine."""

TINY_TRM = {
    "kind": "trm",
    "version": "trm-v0.0.9",
    "device": "cpu",
    "data": {"protocol": "random", "val_fraction": 0.2},
    "trm": {"dim": 16, "heads": 2, "patch": 4, "n": 1, "T": 2, "n_sup": 2},
    "optim": {"epochs": 2, "samples_per_epoch": 64, "batch_size": 16, "warmup_steps": 2},
}
"""4 optimiser steps per epoch, each on 16 maps: 8 on each rank."""


def _torchrun(*command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``command`` on `RANKS` processes through torchrun (a free rendezvous port of its own)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return subprocess.run(
        [*launcher, "--nproc_per_node", str(RANKS), *command],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=TORCHRUN_S,
        check=False,
    )


def _weights(checkpoint: dict[str, Any], config: TrainConfig) -> tuple[str, str]:
    """(digest of the checkpoint's model and EMA, digest of the untrained model and EMA)."""
    model, ema = build_model(config), build_model(config)
    model.load_state_dict(checkpoint["model"])
    ema.load_state_dict(checkpoint["ema"])
    seed_everything(config.seed)
    untrained = build_model(config)  # what the run started from (and its EMA, a copy of it)
    return state_digest(model, ema), state_digest(untrained, untrained)


def test_wafer_cloud_train_under_torchrun_trains_identical_replicas(tmp_path: Path) -> None:
    data = tmp_path / "labelled.npz"
    write_npz(generate_dataset(12, np.random.default_rng(5), sizes=(20, 40)), data)
    config = TrainConfig.model_validate({**TINY_TRM, "data": {**TINY_TRM["data"], "path": data}})
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(config.to_dict()))
    run_dir, model_dir = tmp_path / "run", tmp_path / "model"
    cli = Path(sys.executable).with_name("wafer-cloud")
    done = _torchrun(
        "--no-python",
        str(cli),
        "train",
        *("--config", str(config_path), "--run-dir", str(run_dir), "--out", str(model_dir)),
        cwd=tmp_path,
        env={"CLOUD_WORK_DIR": str(tmp_path / "work"), "CLOUD_TORCH_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("model written to") == 1  # rank 0 alone reports

    checkpoint = torch.load(run_dir / LAST, weights_only=False)
    assert checkpoint["global_step"] == 8  # 64 maps an epoch in global batches of 16
    history = checkpoint["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    for record in history:
        first, second = record["replica_sha256"]
        assert first == second, record["epoch"]  # the two replicas are identical
    assert history[0]["replica_sha256"] != history[1]["replica_sha256"]
    trained, untrained = _weights(checkpoint, config)
    assert history[-1]["replica_sha256"][0] == trained  # the digest is of the saved weights
    assert trained != untrained  # and training moved them
    assert sorted(p.name for p in run_dir.iterdir()) == [BEST, LAST]  # no half-written files
    assert (model_dir / "model.onnx").is_file() and (model_dir / "report.json").is_file()


def test_a_two_process_run_resumes_exactly_where_it_stopped(tmp_path: Path) -> None:
    done = _torchrun(__file__, "resume", str(tmp_path), cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    straight = torch.load(tmp_path / "straight" / LAST, weights_only=False)
    resumed = torch.load(tmp_path / "split" / LAST, weights_only=False)
    assert resumed["epoch"] == straight["epoch"] == 1
    assert resumed["global_step"] == straight["global_step"]
    for key in straight["ema"]:
        assert torch.equal(straight["ema"][key], resumed["ema"][key]), key
    # Pseudo-labels were learnt, and every rank kept the same per-class thresholds.
    assert all(h["semi_mask_rate"] > 0 for h in straight["history"])
    assert np.array_equal(straight["semi"]["status"], resumed["semi"]["status"])
    assert [len(set(h["replica_sha256"])) for h in resumed["history"]] == [1, 1]


def _semi_cnn_data() -> tuple[TrainConfig, PreparedData]:
    """A CNN (BatchNorm: buffers to keep in step) learning from pseudo-labels."""
    train_raw = generate_dataset(8, np.random.default_rng(1), sizes=(20, 40))
    val = Part.of(generate_dataset(4, np.random.default_rng(2), sizes=(20, 40)))
    data = PreparedData(
        train_raw=train_raw,
        train=Part.of(train_raw),
        val=val,
        test=val,
        provenance={"path": "synthetic", "sha256": "0" * 64, "protocol": "official", "seed": 0},
        unlabelled=generate_dataset(6, np.random.default_rng(9), sizes=(20, 40)),
    )
    config = TrainConfig.model_validate(
        {
            **TINY_TRM,
            "kind": "cnn",
            "version": "cnn-v0.0.9",
            "cnn": {"channels": [4, 8, 8]},
            # An untrained teacher is barely above 1/9 sure: a low bar, so pseudo-labels are
            # taken from the first epoch on, and a lower floor, so the thresholds differ by class.
            "semi": {
                "threshold": 0.115,
                "min_threshold": 0.05,
                "ratio": 1,
                "weight": 1.0,
                "warmup_epochs": 0,
            },
        }
    )
    return config, data


def _resume_driver(root: Path) -> None:
    """Each rank: an uninterrupted run, then one stopped after an epoch and resumed."""
    config, data = _semi_cnn_data()
    context = DistributedContext.from_environment()
    with process_group(context, torch.device("cpu")) as replicas:
        train(config, data, root / "straight", replicas=replicas)
        train(config, data, root / "split", stop_after_epochs=1, replicas=replicas)
        train(config, data, root / "split", resume=True, replicas=replicas)


if __name__ == "__main__" and sys.argv[1:2] == ["resume"]:
    _resume_driver(Path(sys.argv[2]))

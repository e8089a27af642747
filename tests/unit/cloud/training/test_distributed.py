"""torchrun's environment as a typed context, and what each rank trains on (no process group:
the two-process runs are in tests/integration/cloud/training/test_distributed.py)."""

import numpy as np
import pytest
import torch
from torch import nn

from cloud.training.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    Replicas,
    process_group,
    state_digest,
)

TORCHRUN = {
    "RANK": "3",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "4",
    "MASTER_ADDR": "10.0.0.7",
    "MASTER_PORT": "29400",
}


def test_without_torchrun_a_process_trains_alone() -> None:
    assert DistributedContext.from_environment({}) == SINGLE_PROCESS
    assert DistributedContext.from_environment({**TORCHRUN, "WORLD_SIZE": "1"}) == SINGLE_PROCESS
    assert not SINGLE_PROCESS.enabled and SINGLE_PROCESS.is_main


def test_torchrun_variables_become_the_context() -> None:
    context = DistributedContext.from_environment(TORCHRUN)
    assert context == DistributedContext(
        rank=3, local_rank=1, world_size=4, master_addr="10.0.0.7", master_port=29400
    )
    assert context.enabled and not context.is_main
    assert context.init_method == "tcp://10.0.0.7:29400"
    ipv6 = DistributedContext.from_environment({**TORCHRUN, "MASTER_ADDR": "::1"})
    assert ipv6.init_method == "tcp://[::1]:29400"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"RANK": ""}, "RANK is not set"),
        ({"MASTER_PORT": "http"}, "MASTER_PORT must be an integer"),
        ({"RANK": "4"}, "out of range"),
        ({"WORLD_SIZE": "four"}, "WORLD_SIZE must be an integer"),
    ],
)
def test_a_broken_torchrun_environment_is_refused(change: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DistributedContext.from_environment({**TORCHRUN, **change})


def test_each_rank_trains_on_its_own_slice_of_the_global_batch() -> None:
    batch = np.arange(16) * 7
    ranks = [
        Replicas(DistributedContext(rank=r, world_size=2), torch.device("cpu")) for r in range(2)
    ]
    slices = [replicas.shard(batch) for replicas in ranks]
    assert [len(s) for s in slices] == [8, 8]
    assert np.array_equal(np.concatenate(slices), batch)  # disjoint, and all of it
    with pytest.raises(ValueError, match="cannot be split"):
        ranks[1].shard(batch[:1])
    assert ranks[0].rank_stream != ranks[1].rank_stream  # each augments with its own stream


def test_alone_every_collective_leaves_the_run_as_it_was() -> None:
    with process_group(SINGLE_PROCESS, torch.device("cpu")) as replicas:
        model = nn.Linear(2, 2)
        assert replicas.wrap(model) is model
        batch = np.arange(5)
        assert replicas.shard(batch) is batch
        assert replicas.rank_stream == ()  # the single-process augmentation stream is unchanged
        values = np.array([1.0, 2.0])
        assert replicas.mean(values) is values
        rows = (np.arange(3), np.ones(3))
        assert replicas.gather_rows(*rows) == rows
        assert replicas.digests(model) == [state_digest(model)]
        replicas.barrier()
        with replicas.main_first():
            pass


def test_the_digest_changes_with_any_weight_and_with_the_shared_state() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    before = state_digest(model)
    assert state_digest(model) == before
    assert state_digest(model, extra=b"\x01") != before
    with torch.no_grad():
        model[1].running_mean[2] += 1e-6  # a buffer counts as much as a parameter
    assert state_digest(model) != before

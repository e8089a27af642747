"""Training on several processes (GPUs or CPU cores) with DistributedDataParallel.

``torchrun`` starts one process per device and tells each where it stands through the
environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). This
module is the one place that reads those variables (`DistributedContext.from_environment`, called
by the CLI); everything below the entry point gets the typed context, or the `Replicas` handle of
a joined process group.

How the work is split: the config's ``batch_size`` stays the global batch. Every rank draws the
same seeded batches and trains on its own contiguous slice of each (``batch_size / world_size``
rows); DDP averages the gradients, so one optimiser step sees the whole batch and the number of
steps, the learning-rate schedule and a checkpoint's config mean the same on one process or on
eight. Each rank augments its slice with a random stream of its own. BatchNorm statistics are
per rank (DDP copies rank 0's running buffers to the others at every forward pass).
"""

from __future__ import annotations

import gc
import hashlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

GROUP_TIMEOUT = timedelta(minutes=30)
"""How long a rank waits for the others at a collective (rank 0 writing a checkpoint included)."""


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands among the training processes ``torchrun`` started.

    The default is one process alone: nothing is initialised and nothing is split.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def enabled(self) -> bool:
        """Whether there are other processes to train with."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs, the model and its report."""
        return self.rank == 0

    @property
    def init_method(self) -> str:
        """The rendezvous URL of the process group (rank 0's or torchrun's store)."""
        host = f"[{self.master_addr}]" if ":" in self.master_addr else self.master_addr
        return f"tcp://{host}:{self.master_port}"

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> DistributedContext:
        """The context ``torchrun`` describes in the environment (``os.environ`` by default).

        Without ``WORLD_SIZE``, or with ``WORLD_SIZE=1``, the process trains alone.

        Raises:
            ValueError: a variable is missing, not a number, or out of range.
        """
        env = os.environ if environ is None else environ
        world_size = _int_variable(env, "WORLD_SIZE", "1")
        if world_size <= 1:
            return cls()
        context = cls(
            rank=_int_variable(env, "RANK"),
            local_rank=_int_variable(env, "LOCAL_RANK"),
            world_size=world_size,
            master_addr=_variable(env, "MASTER_ADDR"),
            master_port=_int_variable(env, "MASTER_PORT"),
        )
        if not 0 <= context.rank < world_size or context.local_rank < 0:
            raise ValueError(f"RANK {context.rank} / LOCAL_RANK {context.local_rank} out of range")
        return context


SINGLE_PROCESS = DistributedContext()


def _variable(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    value = env.get(name, default)
    if value is None or value == "":
        raise ValueError(f"{name} is not set (WORLD_SIZE > 1 needs torchrun's variables)")
    return value


def _int_variable(env: Mapping[str, str], name: str, default: str | None = None) -> int:
    value = _variable(env, name, default)
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


class Replicas:
    """This process's handle on the model replicas it trains with.

    Alone (``world_size`` 1) every method is a no-op that leaves a single-process run exactly
    as it was; in a process group they are the collectives the trainer needs.
    """

    def __init__(self, context: DistributedContext, device: torch.device) -> None:
        self.context = context
        self.device = device

    @classmethod
    def alone(cls, device: torch.device) -> Replicas:
        """A process training by itself on ``device``."""
        return cls(SINGLE_PROCESS, device)

    @property
    def enabled(self) -> bool:
        """Whether gradients, statistics and barriers involve other processes."""
        return self.context.enabled

    @property
    def is_main(self) -> bool:
        """Whether this process writes what the run leaves behind."""
        return self.context.is_main

    @property
    def rank_stream(self) -> tuple[int, ...]:
        """What keys this rank's augmentation stream apart: nothing alone, so a single-process
        run draws the stream it always drew; the rank among several."""
        return (self.context.rank,) if self.enabled else ()

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training step calls: DDP around ``model``, or ``model`` alone."""
        if not self.enabled:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def shard(self, batch: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """This rank's contiguous slice of a global batch of row indexes.

        Raises:
            ValueError: the batch has fewer rows than there are ranks.
        """
        if not self.enabled:
            return batch
        if len(batch) < self.context.world_size:
            raise ValueError(
                f"a batch of {len(batch)} rows cannot be split over {self.context.world_size} ranks"
            )
        return np.array_split(batch, self.context.world_size)[self.context.rank]

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.enabled:
            dist.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block before the others (it fills a cache the others then read)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def mean(self, values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """The element-wise mean of ``values`` over the ranks."""
        if not self.enabled:
            return values
        tensor = torch.as_tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return (tensor / self.context.world_size).cpu().numpy()

    def gather_rows(self, *arrays: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], ...]:
        """Each array concatenated over the ranks in rank order (every rank draws as many rows),
        so every rank sees what all of them saw."""
        if not self.enabled:
            return arrays
        gathered = []
        for array in arrays:
            local = torch.as_tensor(np.ascontiguousarray(array), device=self.device)
            parts = [torch.empty_like(local) for _ in range(self.context.world_size)]
            dist.all_gather(parts, local)
            gathered.append(torch.cat(parts).cpu().numpy())
        return tuple(gathered)

    def share_buffers(self, *modules: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm statistics) of ``modules`` to every rank, so the
        replicas are identical, parameters and buffers, where an epoch ends."""
        if not self.enabled:
            return
        for module in modules:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def digests(self, *modules: nn.Module, extra: bytes = b"") -> list[str]:
        """Every rank's `state_digest` of ``modules`` (and ``extra``), in rank order (one
        entry alone)."""
        digest = state_digest(*modules, extra=extra)
        if not self.enabled:
            return [digest]
        everyone: list[Any] = [None] * self.context.world_size
        dist.all_gather_object(everyone, digest)
        return [str(d) for d in everyone]


def state_digest(*modules: nn.Module, extra: bytes = b"") -> str:
    """sha256 of the modules' state dicts (names, shapes, dtypes and values), in order, and of
    ``extra`` (other state the replicas must share) if any."""
    sha = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            sha.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            sha.update(flat.view(torch.uint8).numpy().tobytes())
    if extra:
        sha.update(b"extra;" + extra)
    return sha.hexdigest()


def placed(context: DistributedContext, device: torch.device) -> torch.device:
    """This rank's device: its own GPU (``cuda:LOCAL_RANK``) in a group on GPUs."""
    if context.enabled and device.type == "cuda":
        return torch.device("cuda", context.local_rank)
    return device


@contextmanager
def process_group(context: DistributedContext, device: torch.device) -> Iterator[Replicas]:
    """Join the training processes for the block (NCCL on GPUs, gloo on CPUs); leave after.

    Alone, nothing is initialised and the `Replicas` handle does nothing.
    """
    device = placed(context, device)
    if not context.enabled:
        yield Replicas(context, device)
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and all_gather_object use the current device
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        init_method=context.init_method,
        rank=context.rank,
        world_size=context.world_size,
        timeout=GROUP_TIMEOUT,
    )
    try:
        yield Replicas(context, device)
        dist.barrier()  # nobody closes its connections while another rank still talks on them
    finally:
        # The DDP wrappers (their reducers hold the group) go first, so the group is torn down
        # here rather than at the interpreter's exit. Without this and the barrier, about one
        # 2-process gloo run in ten lost a rank at exit to SIGABRT ("terminate called without
        # an active exception"); with them, none in forty.
        gc.collect()
        dist.destroy_process_group()

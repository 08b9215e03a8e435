"""Training on several GPUs (or CPU processes) under ``torchrun`` with DistributedDataParallel.

``torchrun --nproc_per_node=N -m kaggle_gan.cli train ...`` starts N copies
of the same command; each reads its rank from the environment variables
torchrun sets. The global batch ``train.batch_size`` is split evenly: every
rank draws the same global index permutation, flips and noise (from
generators seeded alike, so their states stay equal on every rank and a
checkpoint written by rank 0 resumes all of them), keeps its own slice, and
DDP averages the gradients. One step on N ranks is then the same step as
on one process with the whole batch, except that batch norm (the DCGAN
generator, the baseline critic) normalises each rank's slice on its own.

Only rank 0 writes files; the others compute and wait for it at the end.
Without torchrun every helper here is a no-op: a single process is world 1.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

from ..core.io import UserError


@dataclass(frozen=True)
class World:
    """Where this process stands among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True for the one process that writes files, logs and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, global_batch: int) -> slice:
        """This rank's slice of a global batch: rank r takes rows [r*B/N, (r+1)*B/N)."""
        per = global_batch // self.size
        return slice(self.rank * per, (self.rank + 1) * per)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> World:
    """The world of an initialised process group, or the single-process world."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[World]:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU) for the block.

    A no-op outside torchrun, and when a group already exists (it is then
    left to whoever made it).
    """
    import torch
    import torch.distributed as dist

    if not launched_by_torchrun() or dist.is_initialized():
        yield current()
        return
    gpu = torch.cuda.is_available() and not str(device).lower().startswith("cpu")
    if gpu:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise UserError(
                f"torchrun started {os.environ.get('LOCAL_WORLD_SIZE', '?')} processes on this machine but only "
                f"{torch.cuda.device_count()} GPU(s) are visible; set GPUS={torch.cuda.device_count()}"
            )
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if gpu else "gloo")
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def check_batch(batch_size: int, world: World) -> None:
    if batch_size % world.size:
        raise UserError(
            f"train.batch_size={batch_size} does not split evenly over {world.size} processes; "
            f"use a multiple of {world.size}"
        )


def local_device(device: "torch.device", world: World) -> "torch.device":  # noqa: F821
    """The device of this rank: ``cuda:LOCAL_RANK`` on GPUs; on CPU the cores are shared out among ranks."""
    import torch

    from ..core.runtime import available_cores

    if not world.distributed:
        return device
    if device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    if device.type == "cpu":  # N processes each using every core would oversubscribe them
        torch.set_num_threads(max(1, available_cores() // world.size))
    return device


def wrap(module: "torch.nn.Module", device: "torch.device", world: World) -> "torch.nn.Module":  # noqa: F821
    """``module`` itself for one process, else DistributedDataParallel around it (gradients averaged).

    The wrapper broadcasts rank 0's weights at construction, so every rank
    starts from the same ones even if their seeds differed.
    """
    if not world.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def mean_over_ranks(values: "dict", world: World) -> "dict":
    """``{name: scalar tensor}`` averaged over the ranks (one all-reduce); unchanged for one process."""
    if not world.distributed or not values:
        return values
    import torch
    import torch.distributed as dist

    names = sorted(values)
    stacked = torch.stack([values[k].detach().float() for k in names])
    dist.all_reduce(stacked)
    stacked /= world.size
    return {k: stacked[i] for i, k in enumerate(names)}


def barrier(world: World) -> None:
    """Wait until every rank gets here (rank 0 finishing its files, typically)."""
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()

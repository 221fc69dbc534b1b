"""Multi-process training for `torchrun --nproc-per-node N -m model.train ...` (DistributedDataParallel).

Semantics: `--batch-size` is the *global* batch and `--lr` its learning rate, whatever N. Every rank draws
the same seeded permutation and the same dequantisation noise for the whole global batch, then keeps its
contiguous 1/N slice; DDP averages the gradients of the N equal slices, which is the gradient of the
global batch's mean loss. So N processes take the same optimisation steps as one process (up to float
summation order), and a run can be resumed with a different N. Rank 0 alone logs and writes files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["Distributed", "LossModule", "close_distributed", "setup_distributed"]


class LossModule(nn.Module):
    """`forward(x)`: the flow's per-image log-likelihood, so that DDP's hooks see the training pass."""

    def __init__(self, flow: nn.Module):
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob_continuous(x)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job; `world_size == 1` (no process group) is plain training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_batch(self, global_batch: int) -> int:
        if global_batch % self.world_size:
            raise ValueError(f"--batch-size {global_batch} is not divisible by {self.world_size} processes")
        return global_batch // self.world_size

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch (the same global batch on every rank)."""
        size = self.local_batch(batch.shape[0])
        return batch[self.rank * size : (self.rank + 1) * size]

    def wrap(self, flow: nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        """The training pass `x -> log p(x)`: DDP-wrapped (gradients averaged over ranks) when distributed."""
        module = LossModule(flow)
        if not self.enabled:
            return module
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a small tensor (losses, flags); itself when not distributed."""
        if not self.enabled:
            return values
        values = values.detach().clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values / self.world_size

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if it is true on any: collective decisions such as stopping on time."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup_distributed(device_arg: str) -> tuple[Distributed, torch.device]:
    """Join the process group that `torchrun` describes (NCCL on GPUs, gloo on CPUs) and pick the device.

    Without torchrun's environment (or with one process) nothing is initialised and `device_arg` is used
    as in single-process training.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    if world_size <= 1:
        return Distributed(), torch.device(device_arg if device_arg != "auto" else auto)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    kind = torch.device(device_arg if device_arg != "auto" else auto).type
    device = torch.device("cuda", local_rank) if kind == "cuda" else torch.device("cpu")
    if not dist.is_initialized():
        if kind == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return Distributed(rank, world_size, local_rank), device


def close_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

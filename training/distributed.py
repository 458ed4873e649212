"""Data-parallel training across processes started by torchrun (gloo on CPUs, NCCL on GPUs).

Why not the `DistributedDataParallel` wrapper: CEDS steps two optimizers on two losses from one
forward pass (confidence loss -> confidence branch, segmentation loss -> the rest), and the student
runs twice per semi-supervised step (labeled and unlabeled parts, as the reference). DDP's reducer
assumes one backward per forward. This module does what DDP does, explicitly: the same initial
weights everywhere, gradients averaged with one all-reduce per optimizer step, BatchNorm running
statistics averaged after every step. Every process then holds bit-identical students, so the EMA
teachers stay identical too; `check_replicas_equal` verifies it each epoch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ceds_deploy.backends.base import is_cuda
from ceds_deploy.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """This process's place in a run: `rank` of `world_size`, its `local_rank` and `device`; the defaults
    are a single process, where every collective does nothing."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files and reports progress."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process gets here (nothing in a single process)."""
        if self.enabled:
            torch.distributed.barrier()

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers everywhere."""
        if self.enabled:
            for tensor in [*module.parameters(), *module.buffers()]:
                torch.distributed.broadcast(tensor.data, src=0)

    def average_gradients(self, params: list[nn.Parameter]) -> None:
        """Mean of every gradient over the processes, in one flat all-reduce."""
        self._average_in_place([p.grad for p in params if p.grad is not None])

    def average_buffers(self, module: nn.Module) -> None:
        """Mean of the floating-point buffers (BatchNorm running mean and variance)."""
        self._average_in_place([b for b in module.buffers() if b.is_floating_point()])

    def _average_in_place(self, tensors: list[torch.Tensor]) -> None:
        if not self.enabled or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def all_mean(self, values: list[float]) -> list[float]:
        """Mean over processes of a few numbers (losses for the log)."""
        if not self.enabled or not values:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return (t / self.world_size).tolist()

    def gather(self, items: list) -> list:
        """Every process's `items` (picklable), concatenated in rank order, on every process."""
        if not self.enabled:
            return list(items)
        parts: list = [None] * self.world_size
        torch.distributed.all_gather_object(parts, list(items))
        return [item for part in parts for item in part]

    def check_replicas_equal(self, module: nn.Module, what: str) -> None:
        """`RuntimeError` if `module` differs between processes (it must not: same weights, same updates)."""
        if not self.enabled:
            return
        with torch.no_grad():
            mine = torch.stack([t.double().sum() for t in module.state_dict().values() if t.is_floating_point()])
            theirs = mine.clone()
            torch.distributed.broadcast(theirs, src=0)
        if not torch.equal(mine, theirs):
            raise RuntimeError(f"rank {self.rank}: the {what} differs from rank 0's; the replicas drifted apart")

    def shutdown(self) -> None:
        """Leave the process group, if one was joined."""
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init_distributed(device: str) -> DistContext:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT); a plain single-process context otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda under torchrun, but this PyTorch has no CUDA GPU")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def check_device(device: str) -> None:
    """`ConfigError` for a CUDA device on a PyTorch without a usable GPU."""
    if is_cuda(device) and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this PyTorch has no CUDA GPU (torch.cuda.is_available() is False)")

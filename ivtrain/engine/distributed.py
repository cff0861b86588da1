"""The process group, and what objectives may use of it: rank, world size, and collectives whose gradient is exact.

Works without a launcher (plain `python`: a world of one), under torchrun and the DeepSpeed launcher, on one node
or several (`iv train --nnodes`), gloo on CPU and NCCL on CUDA.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_distributed(device: torch.device) -> tuple[int, int]:
    """Initialize torch.distributed (gloo on CPU, nccl on CUDA); returns (rank, world size)."""
    import deepspeed

    if "RANK" not in os.environ:  # plain `python`: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", verbose=False)
    return dist.get_rank(), dist.get_world_size()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward is exact: each rank's slice receives the sum over ranks of the gradients that flow
    into it. Each rank's loss uses every rank's slice, so the slice's true gradient is that sum; DeepSpeed then
    averages parameter gradients over ranks, which makes the step the one a single process would take over the
    global batch. (Returning only the local rank's share, as the released stage-2 code does, leaves the
    other ranks' contributions out.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)   # gloo has no reduce_scatter: reduce the whole, keep this rank's slice
        return grad.chunk(ctx.world)[ctx.rank]


@dataclass(frozen=True)
class DistContext:
    """What an objective may know of the job: its rank, the world size, the device, and gathers over ranks.
    Every rank's tensor must have the same shape (pad where batches differ)."""
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """(world * B, ...) of every rank's (B, ...), in rank order; differentiable with the exact gradient."""
        if self.world == 1:
            return x
        return _GatherWithGrad.apply(x)

    def all_gather_objects(self, values: list) -> list:
        """Plain Python values of every rank (e.g. source ids), concatenated in rank order."""
        if self.world == 1:
            return list(values)
        out: list = [None] * self.world
        dist.all_gather_object(out, list(values))
        return [v for part in out for v in part]

    # The collectives below run on the training device: NCCL takes no CPU tensors.
    def any(self, flag: bool) -> bool:
        return self._reduce_flag(flag, dist.ReduceOp.MAX)

    def all(self, flag: bool) -> bool:
        return self._reduce_flag(flag, dist.ReduceOp.MIN)

    def _reduce_flag(self, flag: bool, op) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        if self.world > 1:
            dist.all_reduce(t, op=op)
        return bool(t.item() > 0)

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Each key summed over ranks (every rank must pass the same keys)."""
        if self.world == 1 or not values:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

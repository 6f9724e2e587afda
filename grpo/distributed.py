"""Data parallelism without a wrapper: each rank samples its own prompts, gradients are summed.

Launch with `torchrun --nproc_per_node K scripts/train_grpo.py ...` (gloo on CPU, NCCL on GPU).

[D1] No DistributedDataParallel: the losses are already normalised by whole-batch counts (all ranks,
     grpo.loss [D1]), so the full-batch gradient is the *sum* of the ranks' gradients, all-reduced once
     per optimiser step over the trainable parameters only (a LoRA adapter is a few MB). This keeps the
     forward pass free to call the decoder and LM head separately (grpo.policy) and is easy to audit.
[D2] Counts and stats cross ranks through `all_reduce_sum` / `all_gather_rows`; with one process they
     are the identity, so single-process code pays nothing.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed() -> tuple[int, int]:
    """(rank, world_size); starts the process group when launched by torchrun with more than one rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return rank(), world_size()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Σ over ranks (a new tensor; the identity with one process) [D2]."""
    x = x.clone()
    if world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate along dim 0 the same-shaped tensors of every rank, in rank order [D2]."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


def sum_gradients(params: list[torch.Tensor]) -> None:
    """Replace each gradient by its sum over ranks, in one flat all-reduce [D1]."""
    if world_size() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n

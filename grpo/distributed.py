"""Data parallelism without a wrapper: each rank samples its own prompts, gradients are summed.

Launch with `torchrun --nproc_per_node K scripts/train_grpo.py ...`; the backend follows `--device`
(gloo for the CPU, NCCL for CUDA), and "cuda"/"auto" mean this rank's GPU, cuda:LOCAL_RANK. This is
`--sharding none`, the readable default; `--sharding fsdp2` shards weights, gradients and optimiser
state with PyTorch's FSDP2 instead (grpo/sharding.py), and the functions below then skip the sharded
parameters (FSDP has reduced them; there are no replicas to compare).

What DistributedDataParallel would do for us, and where we do it instead (STYLE.md, nanoGPT):
    initial weights   `broadcast_trainable` copies rank 0's trainable tensors to every rank right
                      after loading (a fresh LoRA adapter is random per rank otherwise) [D3]
    gradients         `sum_gradients`, once per optimiser step [D1]
    buffers           none of ours change during training (rotary tables are computed from the
                      config; frozen and 4-bit weights are read from the same files): nothing to sync
    replicas checked  `check_replicas` compares a sha256 of every rank's trainable tensors at every
                      checkpoint and stops the run if they differ [D4]

[D1] No DistributedDataParallel: the losses are already normalised by whole-batch counts (all ranks,
     grpo.aggregation [A1]), so the full-batch gradient is the *sum* of the ranks' gradients, all-reduced once
     per optimiser step over the trainable parameters only (a LoRA adapter is a few MB). This keeps the
     forward pass free to call the decoder and LM head separately (grpo.policy) and is easy to audit.
[D2] Counts and stats cross ranks through `all_reduce_sum` / `all_gather_rows`; with one process they
     are the identity, so single-process code pays nothing.
[D3] Ranks seed differently (seed + rank) so that they sample different completions; that seed also
     initialises a fresh LoRA adapter, hence the broadcast. Every rank then applies the same summed
     gradient with the same AdamW, so the replicas stay bit-identical.
[D4] Everything named "collective" below must be called by every rank in the same order.
[D5] A rank that returned early (rank 0 still writing final/) and let the interpreter tear the process
     group down at exit could abort in gloo's threads ("terminate called without an active exception",
     SIGABRT, seen in 2 of ~40 fsdp2 runs); `shutdown` waits for every rank and destroys the group first.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
import torch.distributed as dist


def env_rank() -> int:
    """This process's global rank from torchrun's environment (0 without torchrun), before any init."""
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    """The number of processes from torchrun's environment (1 without torchrun), before any init: what
    settings that split a batch over the ranks are checked against (grpo.config [D9])."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's rank on its node (torchrun's LOCAL_RANK; 0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def backend_for(device: str) -> str:
    """gloo for the CPU, NCCL for CUDA: the backend follows the device the model trains on."""
    from grpo.models import resolve_device

    return "nccl" if resolve_device(device).type == "cuda" else "gloo"


def init_distributed(device: str = "auto") -> tuple[int, int]:
    """(rank, world_size); starts the process group when launched by torchrun with more than one rank.

    The backend follows `device` (`backend_for`); with CUDA this process's current device becomes
    cuda:LOCAL_RANK, so that NCCL, Triton launches and `device="cuda"` all mean this rank's GPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = backend_for(device)
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend=backend)
    return rank(), world_size()


def shutdown() -> None:
    """Leave torch.distributed together (collective; a no-op with one process): wait for every rank, then
    destroy the process group [D5]. Scripts call it as their last step."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    """Wait for every rank (collective; a no-op with one process)."""
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Σ over ranks (a new tensor; the identity with one process) [D2]."""
    x = x.clone()
    if world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is True on any rank (collective), e.g. a Ctrl-C seen by one rank."""
    if world_size() == 1:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=device)).item() > 0)


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate along dim 0 the same-shaped tensors of every rank, in rank order [D2]."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable `obj`, in rank order (collective; [obj] with one process)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def sum_gradients(params: list[torch.Tensor]) -> None:
    """Replace each gradient by its sum over ranks, in one flat all-reduce [D1] (collective). A no-op for
    sharded parameters: FSDP2 has already reduce-scattered (summed) them (grpo.sharding [S2])."""
    if world_size() == 1 or _sharded(params):
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def _sharded(params: list[torch.Tensor]) -> bool:
    """True when `params` are FSDP2 shards (DTensors), grpo.sharding."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in params)


def broadcast_trainable(model) -> int:
    """Copy rank 0's trainable tensors to every rank, in place [D3] (collective). Returns their count."""
    params = [p for p in model.parameters() if p.requires_grad]
    if world_size() > 1:
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)
    return len(params)


def fingerprint(params: list[torch.Tensor]) -> str:
    """sha256 of the bytes of `params` in order: equal strings mean bit-identical tensors."""
    h = hashlib.sha256()
    for p in params:
        t = p.detach().contiguous().cpu()
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_replicas(params: list[torch.Tensor], *, what: str) -> list[str]:
    """Every rank's `fingerprint(params)` (collective) [D4]; raises on every rank if any differs.

    Returns the fingerprints in rank order (recorded in checkpoints as proof of identical replicas); [] for
    sharded parameters, which are no replicas: each rank holds a different piece (grpo.sharding [S4]).
    """
    if _sharded(params):
        return []
    prints = all_gather_objects(fingerprint(params))
    differ = [r for r, fp in enumerate(prints) if fp != prints[0]]
    if differ:
        raise RuntimeError(f"{what}: the trainable weights of rank(s) {differ} differ from rank 0's "
                           f"({len(params)} tensors); the replicas have diverged, stopping")
    return prints

"""Per-rank memory of the training state (parameters + gradients + AdamW state) without and with FSDP2 sharding.

    torchrun --nproc_per_node 1 scripts/bench_fsdp_memory.py                   # world size 1 (one process)
    torchrun --nproc_per_node 2 scripts/bench_fsdp_memory.py --sharding fsdp2  # each rank's share
    python scripts/bench_fsdp_memory.py --table                                # computed table, 8 × 80 GB GPUs

A full fine-tune (no LoRA) of --model in --dtype takes one optimiser step on a random batch (the forward runs
through grpo.sharding's root), then every rank counts the bytes it holds of its parameters, their gradients and
the optimiser's state: DTensors are counted by their local shard. Peak RSS (Linux VmHWM) is printed beside, but
includes Python, the libraries and activations. Prints a markdown row per rank and a JSON line (command, versions).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from grpo.measure import proc_status_mb  # noqa: E402


def local_bytes(t: torch.Tensor) -> int:
    from torch.distributed.tensor import DTensor

    t = t.to_local() if isinstance(t, DTensor) else t
    return t.numel() * t.element_size()


def state_bytes(model, optimizer) -> dict[str, int]:
    params = [p for p in model.parameters()]
    return {"params": sum(local_bytes(p) for p in params),
            "grads": sum(local_bytes(p.grad) for p in params if p.grad is not None),
            "optimizer": sum(local_bytes(v) for s in optimizer.state.values() for v in s.values()
                             if isinstance(v, torch.Tensor) and v.dim() > 0)}


def measure(args) -> None:
    from grpo import distributed as dd
    from grpo.models import load_model
    from grpo.sharding import policy_module, prepare_model

    rank, world = dd.init_distributed("cpu")
    torch.manual_seed(0)
    model, _ = load_model(args.model, dtype=args.dtype, device="cpu", use_lora=False)
    prepare_model(model, args.sharding)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(0, model.config.vocab_size, (2, 32))
    logits = policy_module(model)(lambda m, x: m(input_ids=x, use_cache=False).logits, ids)
    logits.float().logsumexp(-1).mean().backward()
    optimizer.step()
    b = state_bytes(model, optimizer)
    total = sum(b.values())
    rows = dd.all_gather_objects({"rank": rank, **b, "total": total, "peak_rss_mb": proc_status_mb("VmHWM")})
    if rank == 0:
        print("| model | sharding | world | rank | params MB | grads MB | AdamW MB | state MB | peak RSS MB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {args.model} | {args.sharding} | {world} | {r['rank']} | {r['params'] / 2**20:.1f} | "
                  f"{r['grads'] / 2**20:.1f} | {r['optimizer'] / 2**20:.1f} | {r['total'] / 2**20:.1f} | "
                  f"{r['peak_rss_mb']:.0f} |")
        print(json.dumps({"command": " ".join(sys.argv), "torch": torch.__version__, "model": args.model,
                          "dtype": args.dtype, "sharding": args.sharding, "world": world, "ranks": rows}))
    if world > 1:
        torch.distributed.destroy_process_group()


def table(gpus: int = 8, gpu_gb: int = 80) -> None:
    """fp32 weights (4 B), gradients (4 B) and AdamW moments (8 B): 16 B per parameter, split K ways by FSDP2.
    Activations, the one gathered layer and the sampling pass (which gathers the whole model, grpo.sharding
    [S3]) come on top."""
    print(f"| model | parameters | state, one GPU (none) | state per GPU, fsdp2 × {gpus} | fits {gpu_gb} GB (none / fsdp2) |")
    print("|---|---|---|---|---|")
    for name, n in (("1.5B", 1.54e9), ("7B", 7.62e9), ("8B", 8.03e9)):
        one, per = 16 * n / 1e9, 16 * n / 1e9 / gpus
        print(f"| {name} | {n / 1e9:.2f} B | {one:.0f} GB | {per:.1f} GB | "
              f"{'yes' if one < gpu_gb else 'no'} / {'yes' if per < gpu_gb else 'no'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--sharding", default="none", choices=["none", "fsdp2"])
    ap.add_argument("--table", action="store_true", help="print the computed table for 1.5B / 7B / 8B and exit")
    args = ap.parse_args()
    if args.table:
        table()
    else:
        measure(args)


if __name__ == "__main__":
    main()

"""Run by test_fsdp.py under torchrun: one GRPO update on a fixed batch, split over ranks, with FSDP2.

    fsdp_update_worker.py OUT CACHE SHARDING USE_LORA(0|1)

As tests/ddp_update_worker.py, but the model is prepared with grpo.sharding.prepare_model(model, SHARDING)
before the optimiser is built (as the scripts do), after rank 0's fresh adapter is broadcast. float64,
whole groups per micro-batch (tests/test_ddp.py says why). Rank 0 saves the full gradient and weights after
the AdamW step, gathered from the shards (a collective every rank joins).
"""
import os
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from grpo import distributed as dd  # noqa: E402
from grpo import sharding as sh  # noqa: E402
from grpo.checkpoint import save_model  # noqa: E402
from grpo.models import load_model  # noqa: E402
from grpo.policy import completion_logprobs  # noqa: E402
from grpo_helpers import make_trainer  # noqa: E402
from ddp_update_worker import shard  # noqa: E402


def gathered_state(model) -> dict[str, torch.Tensor]:
    """Trainable weights and their gradients by name, whole (collective under fsdp2)."""
    from torch.distributed.tensor import DTensor

    def full(t):
        return t.full_tensor() if isinstance(t, DTensor) else t

    state = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            state[n] = full(p.detach()).clone()
            if p.grad is not None:
                state[f"{n}.grad"] = full(p.grad).clone()
    return state


class count_all_gathers:
    """Counts FSDP2's parameter all-gathers (torch.distributed.all_gather_single) until `pop()`."""

    def __init__(self):
        import torch.distributed as dist

        self.n, self.original = 0, dist.all_gather_single

        def counting(*args, **kwargs):
            self.n += 1
            return self.original(*args, **kwargs)

        dist.all_gather_single = counting

    def pop(self) -> int:
        import torch.distributed as dist

        dist.all_gather_single = self.original
        return self.n


def main() -> None:
    out, cache, sharding, use_lora = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
    rank, world = dd.init_distributed("cpu")

    def prepare(model):
        dd.broadcast_trainable(model)
        sh.prepare_model(model, sharding)

    extra = {} if use_lora else dict(use_lora=False, learning_rate=1e-4)
    trainer = make_trainer(cache, seed=0, init_seed=rank, prompts_per_step=4, loss_type="dapo",
                           micro_batch_size=4, dtype="float64", device="cpu", bf16=False, prepare=prepare, **extra)
    trainer.rank, trainer.world = 0, 1  # collect the whole global batch identically on every rank
    torch.manual_seed(1234)
    gathers = count_all_gathers()
    batch, _ = trainer._collect()
    sampling_gathers = gathers.pop()
    trainer.rank, trainer.world = rank, world
    trainer._update(shard(batch, rank, world, trainer.cfg.num_generations))
    state = gathered_state(trainer.model)
    final = Path(out).with_suffix(".final")  # final/ as the scripts write it: gathered, rank 0 saves
    weights = sh.full_state_dict(trainer.model)
    if rank == 0:
        save_model(trainer.model, trainer.tok, final, state_dict=weights)
    dd.barrier()
    r, live = batch.rollout, {}
    with torch.no_grad():  # the live (sharded) model's log-probs, every rank
        live = trainer._logprobs(trainer.model, r, slice(0, r.completion_ids.shape[0]))[0]
    if rank == 0:
        reloaded, _ = load_model(str(final), cache_dir=cache, dtype="float64", device="cpu")
        with torch.no_grad():
            again = completion_logprobs(reloaded, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                        temperature=trainer.cfg.temperature)[0]
        state["final_logp_max_diff"] = float((again - live).abs().max())
    if rank == 0:
        diff = state.pop("final_logp_max_diff")
        torch.save({"state": state, "final_logp_max_diff": diff, "completion_ids": batch.rollout.completion_ids, "logp": batch.rollout.logp,
                    "sampling_gathers": sampling_gathers, "units": len(sh.decoder_layers(trainer.model)) + 1}, out)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

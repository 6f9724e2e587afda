"""Run by test_ddp.py under torchrun: one GRPO update on a fixed batch, split over the ranks.

Every rank builds the same model and the same generation batch (same seed), keeps its share of the
groups, runs `GRPOTrainer._update`, and rank 0 saves the updated trainable weights to argv[1].
"""
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from grpo import distributed as dd  # noqa: E402
from grpo.trainer import Batch  # noqa: E402
from grpo.rollout import Rollout  # noqa: E402
from grpo_helpers import make_trainer, trainable_state  # noqa: E402


def shard(batch: Batch, rank: int, world: int, G: int) -> Batch:
    B = batch.rewards.shape[0] // world
    g, s = slice(rank * B, (rank + 1) * B), slice(rank * B * G, (rank + 1) * B * G)
    r = batch.rollout
    part = Rollout(**{k: (v[s] if isinstance(v, (torch.Tensor, list)) else v) for k, v in vars(r).items()})
    return Batch(rollout=part, rewards=batch.rewards[g], per_function=batch.per_function[g],
                 advantages=batch.advantages[g])


def main() -> None:
    out, cache, loss_type = sys.argv[1], sys.argv[2], sys.argv[3]
    rank, world = dd.init_distributed()
    trainer = make_trainer(cache, seed=0, prompts_per_step=4, loss_type=loss_type, micro_batch_size=5)
    trainer.rank, trainer.world = 0, 1  # collect the whole global batch identically on every rank
    batch, _ = trainer._collect()
    trainer.rank, trainer.world = rank, world
    trainer._update(shard(batch, rank, world, trainer.cfg.num_generations))
    if rank == 0:  # the all-reduced (clipped) gradient, and the weights after the AdamW step
        torch.save(trainable_state(trainer, grads=True), out)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

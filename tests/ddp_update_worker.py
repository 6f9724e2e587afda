"""Run by test_ddp.py under torchrun: one GRPO update on a fixed batch, split over the ranks.

    ddp_update_worker.py OUT CACHE LOSS_TYPE DTYPE MICRO_BATCH_SIZE

Every rank loads the model with its own seed (seed = rank, as the scripts seed ranks), so its fresh LoRA
adapter differs until `broadcast_trainable` copies rank 0's, as train_grpo.py does. Every rank then
samples the same global generation batch (same sampling seed), keeps its share of the groups, runs
`GRPOTrainer._update`, and rank 0 saves the updated trainable weights to argv[1].
"""
import os
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
    out, cache, loss_type, dtype, micro = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    device = os.environ.get("GRPO_TEST_DEVICE", "cpu")  # scripts/gpu_check.py: cuda (NCCL, a GPU per rank)
    rank, world = dd.init_distributed(device)
    trainer = make_trainer(cache, seed=0, init_seed=rank, prompts_per_step=4, loss_type=loss_type,
                           micro_batch_size=micro, dtype=dtype, device=device, bf16=False)
    dd.broadcast_trainable(trainer.model)  # what the scripts do after loading
    trainer.rank, trainer.world = 0, 1  # collect the whole global batch identically on every rank
    torch.manual_seed(1234)
    batch, _ = trainer._collect()
    trainer.rank, trainer.world = rank, world
    trainer._update(shard(batch, rank, world, trainer.cfg.num_generations))
    if rank == 0:  # the all-reduced (clipped) gradient, and the weights after the AdamW step
        torch.save(trainable_state(trainer, grads=True), out)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

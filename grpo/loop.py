"""The step loop that scripts/train_grpo.py and scripts/train_sega.py share.

    resume   --resume: model, optimiser, schedule, RNG and data order from the run's newest checkpoint;
             every rank must find the same one, or the run stops with one error naming the rank [L1]
    steps    metrics = trainer.step(); rank 0 logs every logging_steps (metrics.jsonl, progress bar)
             and writes a checkpoint every save_steps
    Ctrl-C   the step in flight finishes, a checkpoint is written, the loop returns `interrupted`
             (the scripts then exit with 130; `--resume` continues from that step)
    end      rank 0 writes the last checkpoint and final/ (adapter or full weights + tokenizer)

[L1] Several ranks read one run folder: multi-node runs need it on a filesystem every node sees. A
     rank that finds another checkpoint (or none) than rank 0 stops the run before any step, on every
     rank, instead of silently starting at step 0 and hanging in the first collective.
[L2] A checkpoint is collective: every rank's RNG states and a sha256 of its trainable weights are
     gathered (grpo.distributed.check_replicas stops the run if the replicas differ), rank 0 writes.
[L3] Ctrl-C may reach one rank only: the stop is agreed across ranks after every step, so all ranks
     write the checkpoint together.

A trainer is anything with `step() -> dict[str, float]` and a `sampler` whose `state()` / `load_state()`
capture the data order (GRPOTrainer, SegaTrainer).
"""
from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass

from grpo import distributed as dd
from grpo.checkpoint import load_checkpoint, prune_checkpoints, save_checkpoint, save_model
from grpo.config import UserError
from grpo.run import MetricsWriter, RunDir, RunSettings, progress, rng_state


@dataclass
class LoopResult:
    step: int  # the last step run
    seconds: float  # wall time of the steps run by this process (resumed steps not counted)
    interrupted: bool  # Ctrl-C: a checkpoint of `step` was written and final/ was not


def train_steps(trainer, *, s: RunSettings, run: RunDir, model, tokenizer, optimizer, scheduler,
                max_steps: int, base_name: str, rank: int = 0, desc: str = "train",
                postfix: tuple[str, ...] = ("reward",)) -> LoopResult:
    """Run `trainer.step()` up to `max_steps` with resume, checkpoints, Ctrl-C and the final save
    (module docstring). `base_name` is what saved adapters record as their base model;
    `postfix` names the metrics shown beside the progress bar."""
    start = 0
    latest = agreed_checkpoint(run) if s.resume else None  # [L1]
    if latest is not None:
        state = load_checkpoint(latest, model=model, optimizer=optimizer, scheduler=scheduler, rank=rank)
        start = state["step"]
        trainer.sampler.load_state(state["data"]["sampler"])
        if rank == 0:
            print(f"resumed from {latest} at step {start}", file=sys.stderr)
            if state["ranks"] != dd.world_size():
                print(f"note: the checkpoint holds the RNG states of {state['ranks']} rank(s), this run has "
                      f"{dd.world_size()}: ranks without one keep their seed's stream", file=sys.stderr)
    elif s.resume and rank == 0:
        print(f"--resume: no checkpoint in {run.checkpoints}; starting from step 0", file=sys.stderr)

    params = [p for p in model.parameters() if p.requires_grad]

    def checkpoint(step: int) -> None:  # collective [L2]
        rng_states = dd.all_gather_objects(rng_state())
        replicas = dd.check_replicas(params, what=f"checkpoint of step {step}")
        if rank == 0:
            save_checkpoint(run.checkpoint(step), model=model, tokenizer=tokenizer, optimizer=optimizer,
                            scheduler=scheduler, step=step, data_state={"sampler": trainer.sampler.state()},
                            base_name=base_name, rng_states=rng_states,
                            info={"world_size": len(replicas), "trainable_sha256": replicas})
            prune_checkpoints(run.checkpoints, keep=s.save_total_limit)
        dd.barrier()

    interrupted: list[bool] = []
    previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    writer = MetricsWriter(run.metrics_file, tensorboard_dir=run.path / "tb" if s.tensorboard else None,
                           truncate_after_step=start) if rank == 0 else None
    bar = progress(range(start, max_steps), initial=start, total=max_steps, desc=desc,
                   disable=None if rank == 0 else True)  # None: shown on a terminal (or GRPO_PROGRESS=1)
    step, t_start = start, time.perf_counter()
    try:
        for step in (i + 1 for i in bar):
            metrics = trainer.step()
            if writer is not None and (step % s.logging_steps == 0 or step == max_steps):
                writer.log(step, metrics)
                bar.set_postfix({k: f"{metrics[k]:.4g}" for k in postfix if k in metrics})
            if dd.any_rank(bool(interrupted)):  # [L3]
                checkpoint(step)
                if rank == 0:
                    print(f"\ninterrupted: saved {run.checkpoint(step)}; continue with --resume", file=sys.stderr)
                return LoopResult(step, time.perf_counter() - t_start, interrupted=True)
            if s.save_steps and step % s.save_steps == 0 and step < max_steps:
                checkpoint(step)
        checkpoint(step)
        if rank == 0:
            save_model(model, tokenizer, run.final, base_name=base_name)
        return LoopResult(step, time.perf_counter() - t_start, interrupted=False)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        signal.signal(signal.SIGINT, previous_handler)


def agreed_checkpoint(run: RunDir):
    """The newest checkpoint of `run`, the same on every rank, or None (collective) [L1].

    Raises a `UserError` on every rank (printed once, by rank 0) when the ranks disagree.
    """
    latest = run.latest_checkpoint()
    seen = dd.all_gather_objects(None if latest is None else latest.name)
    odd = [r for r, name in enumerate(seen) if name != seen[0]]
    if odd:
        found = "; ".join(f"rank {r}: {seen[r] or 'no checkpoint'}" for r in odd)
        raise UserError(f"--resume: rank 0 finds {seen[0] or 'no checkpoint'} in {run.checkpoints}, but {found}. "
                        "Every rank must see the same run folder: put outputs/ on a filesystem shared by all "
                        "nodes (or copy the checkpoint to each)", every_rank=True)
    return latest

"""The step loop that scripts/train_grpo.py and scripts/train_sega.py share.

    resume   --resume: model, optimiser, schedule, RNG and data order from the run's newest checkpoint
    steps    metrics = trainer.step(); rank 0 logs every logging_steps (metrics.jsonl, progress bar)
             and writes a checkpoint every save_steps
    Ctrl-C   the step in flight finishes, a checkpoint is written, the loop returns `interrupted`
             (the scripts then exit with 130; `--resume` continues from that step)
    end      rank 0 writes the last checkpoint and final/ (adapter or full weights + tokenizer)

A trainer is anything with `step() -> dict[str, float]` and a `sampler` whose `state()` / `load_state()`
capture the data order (GRPOTrainer, SegaTrainer).
"""
from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass

from grpo.checkpoint import load_checkpoint, prune_checkpoints, save_checkpoint, save_model
from grpo.run import MetricsWriter, RunDir, RunSettings, progress


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
    latest = run.latest_checkpoint()
    if s.resume and latest is not None:
        state = load_checkpoint(latest, model=model, optimizer=optimizer, scheduler=scheduler)
        start = state["step"]
        trainer.sampler.load_state(state["data"]["sampler"])
        if rank == 0:
            print(f"resumed from {latest} at step {start}", file=sys.stderr)
    elif s.resume and rank == 0:
        print(f"--resume: no checkpoint in {run.checkpoints}; starting from step 0", file=sys.stderr)

    def checkpoint(step: int) -> None:
        if rank == 0:
            save_checkpoint(run.checkpoint(step), model=model, tokenizer=tokenizer, optimizer=optimizer,
                            scheduler=scheduler, step=step, data_state={"sampler": trainer.sampler.state()},
                            base_name=base_name)
            prune_checkpoints(run.checkpoints, keep=s.save_total_limit)

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
            if interrupted:
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

"""The step loop that scripts/train_grpo.py and scripts/train_sega.py share.

    resume   --resume: model, optimiser, schedule, RNG, data order and metrics from the run's newest
             intact checkpoint [L4]; every rank must find that one, or the run stops with one error
             naming the rank [L1]
    steps    metrics = trainer.step(); rank 0 logs every logging_steps (metrics.jsonl, progress bar)
             and writes a checkpoint every save_steps
    eval     with `evaluate` and `eval_steps`: a held-out evaluation before the first step, every
             eval_steps steps and after the last one, one line each in eval.jsonl [L5]
    stop     Ctrl-C (SIGINT) or SIGTERM (what SLURM and Kubernetes send before they kill a job): the step
             in flight finishes, a checkpoint is written, the loop returns with `stopped_by` set (the
             scripts then exit with 128 + the signal: 130, 143; `--resume` continues from that step) [L3]
    end      rank 0 writes the last checkpoint and final/ (adapter or full weights + tokenizer)

[L1] Several ranks read one run folder: multi-node runs need it on a filesystem every node sees. A
     rank that finds another checkpoint (or none) than rank 0 stops the run before any step, on every
     rank, instead of silently starting at step 0 and hanging in the first collective.
[L2] A checkpoint is collective: every rank's RNG states and a sha256 of its trainable weights are
     gathered (grpo.distributed.check_replicas stops the run if the replicas differ), rank 0 writes.
[L3] A signal may reach one rank only: the stop is agreed across ranks after every step, so all ranks
     write the checkpoint together; the exit status is SIGTERM's when any rank got one. Under torchrun a
     SIGTERM to the launcher reaches every worker, which then has the launcher's grace period to save.
[L4] Rank 0 picks the newest checkpoint whose manifest checks out (grpo.checkpoint [D6]), prints one
     line for each newer one it passes over and sets those aside; every other rank checks that same
     checkpoint before reading it. With checkpoints but none intact the run stops with one error
     listing them, rather than silently start again at step 0.

[L5] The evaluation is collective (grpo.evaluation [E1]); rank 0 writes its metrics, keyed by the
     step after which the model was evaluated (0: before training), and prints one line. A resumed run
     keeps the lines up to its checkpoint's step and evaluates that step only when it is due and has no
     line yet (a signal stops a run before the evaluation of its last step).

A trainer is anything with `step() -> dict[str, float]` and a `sampler` whose `state()` / `load_state()`
capture the data order (GRPOTrainer, SegaTrainer).
"""
from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass

from grpo import distributed as dd
from grpo import manifest
from grpo.checkpoint import (load_checkpoint, newest_intact, prune_checkpoints, save_checkpoint, save_model,
                             set_aside)
from grpo.config import UserError
from grpo.sharding import full_optimizer_state, full_state_dict
from grpo.run import MetricsWriter, RunDir, RunSettings, list_checkpoints, progress, read_metrics, rng_state

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # [L3]


@dataclass
class LoopResult:
    step: int  # the last step run
    seconds: float  # wall time of the steps run by this process (resumed steps not counted)
    stopped_by: int = 0  # the signal that stopped the run (a checkpoint of `step` was written, final/ was not)

    @property
    def interrupted(self) -> bool:
        return self.stopped_by != 0

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number (130 Ctrl-C, 143 SIGTERM)."""
        return 128 + self.stopped_by if self.stopped_by else 0


def train_steps(trainer, *, s: RunSettings, run: RunDir, model, tokenizer, optimizer, scheduler,
                max_steps: int, base_name: str, rank: int = 0, desc: str = "train",
                postfix: tuple[str, ...] = ("reward",), evaluate=None, eval_steps: int = 0,
                eval_postfix: str = "reward") -> LoopResult:
    """Run `trainer.step()` up to `max_steps` with resume, checkpoints, SIGINT/SIGTERM and the final save
    (module docstring). `base_name` is what saved adapters record as their base model;
    `postfix` names the metrics shown beside the progress bar; `evaluate() -> dict` is the held-out
    evaluation run every `eval_steps` [L5], `eval_postfix` the metric it prints."""
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
        weights, optimizer_state = full_state_dict(model), full_optimizer_state(model, optimizer)  # [S7]
        if rank == 0:
            save_checkpoint(run.checkpoint(step), model=model, tokenizer=tokenizer, optimizer=optimizer,
                            state_dict=weights, optimizer_state=optimizer_state,
                            scheduler=scheduler, step=step, data_state={"sampler": trainer.sampler.state()},
                            base_name=base_name, rng_states=rng_states,
                            info={"world_size": len(replicas), "trainable_sha256": replicas})
            prune_checkpoints(run.checkpoints, keep=s.save_total_limit)
        dd.barrier()

    writer = MetricsWriter(run.metrics_file, tensorboard_dir=run.path / "tb" if s.tensorboard else None,
                           truncate_after_step=start) if rank == 0 else None
    evaluating = evaluate is not None and eval_steps > 0
    eval_writer = MetricsWriter(run.path / "eval.jsonl", truncate_after_step=start) \
        if evaluating and rank == 0 else None

    def held_out(step: int) -> None:  # collective [L5]
        metrics = evaluate()
        if eval_writer is not None:
            eval_writer.log(step, metrics)
            stderr = metrics.get(f"{eval_postfix}_stderr")
            print(f"\neval after step {step}: {eval_postfix} {metrics.get(eval_postfix, float('nan')):.4g}"
                  + (f" ± {stderr:.2g}" if stderr is not None else "") + f" ({metrics.get('num_examples')} examples, "
                  f"{metrics.get('seconds', 0):.0f}s)", file=sys.stderr)

    if evaluating and (start == 0 or start % eval_steps == 0):  # step 0, or a step a signal cut before its eval
        done = rank == 0 and any(r.get("step") == start for r in read_metrics(run.path / "eval.jsonl"))
        if not dd.all_gather_objects(done)[0]:
            held_out(start)
    bar = progress(range(start, max_steps), initial=start, total=max_steps, desc=desc,
                   disable=None if rank == 0 else True)  # None: shown on a terminal (or GRPO_PROGRESS=1)
    step, t_start = start, time.perf_counter()
    received: list[int] = []  # signals seen by this rank [L3]
    previous = {sig: signal.signal(sig, lambda signum, _: received.append(signum)) for sig in STOP_SIGNALS}
    try:
        for step in (i + 1 for i in bar):
            metrics = trainer.step()
            if writer is not None and (step % s.logging_steps == 0 or step == max_steps):
                writer.log(step, metrics)
                bar.set_postfix({k: f"{metrics[k]:.4g}" for k in postfix if k in metrics})
            if dd.any_rank(bool(received)):  # [L3]
                seen = {sig for signals in dd.all_gather_objects(sorted(set(received))) for sig in signals}
                signum = signal.SIGTERM if signal.SIGTERM in seen else signal.SIGINT
                checkpoint(step)
                if rank == 0:
                    print(f"\ninterrupted ({signal.Signals(signum).name}): saved {run.checkpoint(step)}; "
                          "continue with --resume", file=sys.stderr)
                return LoopResult(step, time.perf_counter() - t_start, stopped_by=int(signum))
            if evaluating and (step % eval_steps == 0 or step == max_steps):
                held_out(step)
            if s.save_steps and step % s.save_steps == 0 and step < max_steps:
                checkpoint(step)
        checkpoint(step)
        weights = full_state_dict(model)  # collective under fsdp2 (grpo.sharding [S7])
        if rank == 0:
            save_model(model, tokenizer, run.final, base_name=base_name, state_dict=weights)
        return LoopResult(step, time.perf_counter() - t_start)
    finally:
        bar.close()
        for w in (writer, eval_writer):
            if w is not None:
                w.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def agreed_checkpoint(run: RunDir):
    """The newest intact checkpoint of `run` as rank 0 finds it [L4], checked by every rank, or None
    (collective) [L1].

    Raises a `UserError` on every rank (printed once, by rank 0) when checkpoints exist but none is
    intact, or when another rank lacks rank 0's choice or finds it damaged.
    """
    choice = error = None
    if dd.rank() == 0:
        ckpt, skipped = newest_intact(run.checkpoints)
        if ckpt is None and skipped:
            error = (f"--resume: no intact checkpoint in {run.checkpoints}: "
                     + "; ".join(f"{p.name}: {why}" for p, why in skipped)
                     + ". Start again with --overwrite, or restore a checkpoint from a copy")
        else:
            for p, why in skipped:
                print(f"--resume: skipped {p.name}: {why}; set aside as {set_aside(p).name}", file=sys.stderr)
            choice = None if ckpt is None else ckpt.name
    choice, error = dd.all_gather_objects((choice, error))[0]
    if error:
        raise UserError(error, every_rank=True)
    if dd.world_size() > 1:  # rank 0 checked its own copy; the others check theirs
        mine = None
        if dd.rank() != 0 and choice is not None:
            why = manifest.problem(run.checkpoints / choice)
            mine = None if why is None else (f"no checkpoint {choice}" if why == "no such folder"
                                             else f"{choice} is damaged ({why})")
        elif dd.rank() != 0 and list_checkpoints(run.checkpoints):
            mine = f"{list_checkpoints(run.checkpoints)[-1].name} (rank 0 finds none)"
        seen = dd.all_gather_objects(mine)
        odd = [r for r, what in enumerate(seen) if what is not None]
        if odd:
            found = "; ".join(f"rank {r}: {seen[r]}" for r in odd)
            raise UserError(f"--resume: rank 0 resumes from {choice or 'no checkpoint'} in {run.checkpoints}, but "
                            f"{found}. Every rank must see the same run folder: put outputs/ on a filesystem shared "
                            "by all nodes (or copy the checkpoint to each)", every_rank=True)
    return None if choice is None else run.checkpoints / choice

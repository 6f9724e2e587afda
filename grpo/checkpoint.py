"""Checkpoints: the model (PEFT adapter or full safetensors), optimiser, scheduler, RNG and data order.

    checkpoints/step-000040/
        adapter_model.safetensors + adapter_config.json    (LoRA: standard PEFT format), or
        model.safetensors + config.json                   (full weights)
        tokenizer files
        trainer_state.pt    optimiser, scheduler, every rank's RNG states, step, data-order state
        trainer_state.json  the human-readable part (step, ranks, sha256 of each rank's trainable weights)
        manifest.json       size and sha256 of every file above, written last (grpo.manifest)

[D1] A checkpoint folder is complete or absent: it is written into a temporary folder and renamed
     (grpo.atomic.atomic_dir). `--resume` takes the newest intact one [D6]; a full disk stops the run
     with one line naming the checkpoint and leaves no part of it (grpo.atomic [D3]).
[D2] The adapter's `base_model_name_or_path` is rewritten to the name the run loaded (e.g.
     `smollm2-135m`), so `load_model(<checkpoint>)` finds the base again on any machine.
[D3] Only the newest `keep` checkpoints are kept; `final/` is never deleted.
[D4] Several ranks: the weights and optimiser are the same on every rank (grpo.distributed [D3]) and
     rank 0 writes them; each rank's RNG states differ (each samples its own completions), so all of
     them are gathered into the checkpoint and each rank restores its own on resume. A run resumed on
     more ranks than wrote the checkpoint starts the extra ranks' streams from their seed.
[D5] No NaN model is ever saved: a trainable weight holding NaN or ±inf stops the save (issue #13;
     grpo.optim [D1] keeps non-finite steps from reaching the weights in the first place).
[D6] Damaged checkpoints (issue #14 item 4: truncated, emptied or missing files, an empty step-* folder,
     flipped bytes) are found by their manifest before anything is loaded: `newest_intact` walks back from
     the newest, and the loop sets each damaged one it passed aside as step-N.damaged (kept for the user,
     no longer resumed nor pruned as one of the newest; grpo.run [D4]).
[D7] On resume the optimiser's moments and step counts and the schedule's position come from the
     checkpoint; its hyperparameters (learning rate, weight decay) and the schedule's peak are this leg's
     settings (`--resume --learning-rate 0.5` trains at 0.5, where loading the state dict silently kept
     the old rate), and the rate is recomputed for the restored position under this leg's schedule.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from grpo import manifest
from grpo.run import atomic_dir, atomic_write_json, list_checkpoints, rng_state, set_rng_state


def _unwrap(model):
    return getattr(model, "module", model)  # DistributedDataParallel keeps the model in .module


def save_model(model, tokenizer, path: str | Path, *, base_name: str | None = None) -> Path:
    """Save an adapter (PEFT format) or full weights (safetensors) plus tokenizer, atomically [D1].

    Refuses (ValueError, nothing written) when a trainable weight holds NaN or ±inf [D5].
    """
    path = Path(path)
    model = _unwrap(model)
    bad = [n for n, p in model.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())]
    if bad:  # [D5]
        raise ValueError(f"not saving {path}: {len(bad)} trainable weight(s) hold NaN or inf (first: {bad[0]})")
    with atomic_dir(path) as tmp:
        if hasattr(model, "peft_config"):  # the trained adapter only, not a frozen KL reference copy
            model.save_pretrained(tmp, safe_serialization=True, selected_adapters=[model.active_adapter])
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        adapter_cfg = tmp / "adapter_config.json"
        if base_name and adapter_cfg.is_file():  # [D2]
            cfg = json.loads(adapter_cfg.read_text())
            cfg["base_model_name_or_path"] = base_name
            adapter_cfg.write_text(json.dumps(cfg, indent=2))
    return path


def save_checkpoint(path: str | Path, *, model, tokenizer, optimizer, scheduler=None, step: int,
                    data_state: dict[str, Any] | None = None, info: dict[str, Any] | None = None,
                    base_name: str | None = None, rng_states: list[dict[str, Any]] | None = None) -> Path:
    """Write a complete resumable checkpoint folder [D1]; `rng_states` holds every rank's RNG states in
    rank order [D4] (default: this process's alone)."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_model(model, tokenizer, tmp / "model", base_name=base_name)
        _torch_save({"step": step, "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict() if scheduler is not None else None,
                     "rng_per_rank": rng_states or [rng_state()], "data": data_state or {}},
                    tmp / "trainer_state.pt")
        atomic_write_json(tmp / "trainer_state.json", {"step": step, **(info or {})})
        manifest.write_manifest(tmp)  # last [D6]
    return path


class _Recorder:
    """A file whose failed `write` is remembered: torch.save reports a full disk only as "unexpected pos"."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _torch_save(obj: Any, path: Path) -> None:
    """torch.save that raises the OSError of a failed write itself (grpo.atomic [D3])."""
    f = open(path, "wb")
    out = _Recorder(f)
    try:
        torch.save(obj, out)
        f.flush()
        os.fsync(f.fileno())
    except Exception:
        if out.error is not None:
            raise out.error from None
        raise
    finally:
        try:
            f.close()
        except OSError:  # the buffered bytes of a failed write: already reported
            if out.error is None:
                raise


def load_checkpoint(path: str | Path, *, model, optimizer=None, scheduler=None, rank: int = 0) -> dict[str, Any]:
    """Restore weights, optimiser, scheduler and `rank`'s RNG states [D4] from `path`.

    Returns {"step", "data", "ranks"}: ranks = how many ranks' RNG states the checkpoint holds (when
    `rank` ≥ ranks, this process's RNG is left as seeded).
    """
    from safetensors.torch import load_file

    path = Path(path)
    model = _unwrap(model)
    weights_dir = path / "model"
    adapter = weights_dir / "adapter_model.safetensors"
    if adapter.is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(adapter), adapter_name=model.active_adapter)
    else:
        state = {}
        for f in sorted(weights_dir.glob("*.safetensors")):
            state.update(load_file(f))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:  # tied heads are not saved
            raise RuntimeError(f"{weights_dir}: weights do not match the model "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
    if optimizer is not None:
        settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]  # this leg's
        optimizer.load_state_dict(state["optimizer"])
        for group, mine in zip(optimizer.param_groups, settings):
            group.update(mine)  # [D7]
    if scheduler is not None and state.get("scheduler") is not None:
        peaks = list(scheduler.base_lrs)
        scheduler.load_state_dict(state["scheduler"])
        scheduler.base_lrs = peaks  # [D7]
        factors = getattr(scheduler, "lr_lambdas", None)  # LambdaLR (grpo.optim): lr = peak · f(position)
        if optimizer is not None and factors is not None:
            for group, peak, f in zip(optimizer.param_groups, peaks, factors):
                group["lr"] = peak * f(scheduler.last_epoch)
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    rngs = state["rng_per_rank"] if "rng_per_rank" in state else [state["rng"]]  # "rng": one-process format
    if rank < len(rngs):
        set_rng_state(rngs[rank])
    return {"step": state["step"], "data": state.get("data", {}), "ranks": len(rngs)}


def prune_checkpoints(folder: str | Path, *, keep: int) -> None:
    """Delete all but the newest `keep` step-* folders [D3] (damaged ones set aside are not counted [D6])."""
    done = list_checkpoints(folder)
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def newest_intact(folder: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint in `folder` whose manifest checks out [D6], and the (checkpoint, problem)
    of each newer one passed over; (None, all of them) when none is intact."""
    skipped: list[tuple[Path, str]] = []
    for ckpt in reversed(list_checkpoints(folder)):
        why = manifest.problem(ckpt)
        if why is None:
            return ckpt, skipped
        skipped.append((ckpt, why))
    return None, skipped


def set_aside(ckpt: Path) -> Path:
    """Rename a damaged checkpoint to step-N.damaged (or .damaged-2, …) [D6]; returns the new path."""
    target, n = ckpt.with_name(ckpt.name + ".damaged"), 1
    while target.exists():
        n += 1
        target = ckpt.with_name(f"{ckpt.name}.damaged-{n}")
    os.replace(ckpt, target)
    return target

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


def save_model(model, tokenizer, path: str | Path, *, base_name: str | None = None,
               state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save an adapter (PEFT format) or full weights (safetensors) plus tokenizer, atomically [D1].

    `state_dict`: the model's whole weights gathered from its shards (grpo.sharding.full_state_dict [S7]);
    None: the model's own. Refuses (ValueError, nothing written) when a trainable weight holds NaN or ±inf [D5].
    """
    path = Path(path)
    model = _unwrap(model)
    trainable = [(n, p if state_dict is None else state_dict[n])
                 for n, p in model.named_parameters() if p.requires_grad]
    bad = [n for n, p in trainable if not bool(torch.isfinite(p).all())]
    if bad:  # [D5]
        raise ValueError(f"not saving {path}: {len(bad)} trainable weight(s) hold NaN or inf (first: {bad[0]})")
    given = {} if state_dict is None else {"state_dict": state_dict}
    with atomic_dir(path) as tmp:
        if hasattr(model, "peft_config"):  # the trained adapter only, not a frozen KL reference copy
            model.save_pretrained(tmp, safe_serialization=True, selected_adapters=[model.active_adapter], **given)
        else:
            model.save_pretrained(tmp, safe_serialization=True, **given)
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
                    base_name: str | None = None, rng_states: list[dict[str, Any]] | None = None,
                    state_dict: dict[str, torch.Tensor] | None = None,
                    optimizer_state: dict[str, Any] | None = None) -> Path:
    """Write a complete resumable checkpoint folder [D1]; `rng_states` holds every rank's RNG states in
    rank order [D4] (default: this process's alone). `state_dict`, `optimizer_state`: gathered from shards
    (grpo.sharding [S7]); None: the model's and optimiser's own."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_model(model, tokenizer, tmp / "model", base_name=base_name, state_dict=state_dict)
        _torch_save({"step": step, "optimizer": optimizer_state or optimizer.state_dict(),
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

    from grpo import sharding

    path = Path(path)
    model = _unwrap(model)
    weights_dir = path / "model"
    adapter = weights_dir / "adapter_model.safetensors"
    if sharding.is_sharded(model):  # every rank reads the files and keeps its shard (grpo.sharding [S7])
        return _load_sharded(path, model=model, optimizer=optimizer, scheduler=scheduler, rank=rank)
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
    return _restore_trainer_state(state, optimizer=optimizer, scheduler=scheduler, rank=rank)


def _load_sharded(path: Path, *, model, optimizer, scheduler, rank: int) -> dict[str, Any]:
    """load_checkpoint for a model sharded by grpo.sharding (collective): the saved files hold whole
    tensors under the names of an ordinary save; the adapter's names gain the adapter's name back, as
    peft.set_peft_model_state_dict does."""
    import re

    from safetensors.torch import load_file

    from grpo import sharding

    weights: dict[str, torch.Tensor] = {}
    for f in sorted((path / "model").glob("*.safetensors")):
        weights.update(load_file(f))
    if (path / "model" / "adapter_model.safetensors").is_file():
        name = model.active_adapter
        weights = {re.sub(r"\.(lora_[AB]|lora_embedding_[AB]|lora_magnitude_vector)\.", rf".\1.{name}.", k): v
                   for k, v in weights.items()}
    own = set(model.state_dict())
    unknown = [k for k in weights if k not in own]
    if unknown:
        raise RuntimeError(f"{path / 'model'}: weights do not match the model (unexpected {unknown[:3]})")
    state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups] if optimizer else []
    sharding.load_full_state(model, weights, optimizer, state["optimizer"] if optimizer is not None else None)
    for group, mine in zip(optimizer.param_groups if optimizer else [], settings):
        group.update(mine)  # [D7]
    return _restore_trainer_state(state, optimizer=None, scheduler=scheduler, rank=rank, optimizer_for_lr=optimizer)


def _restore_trainer_state(state: dict[str, Any], *, optimizer, scheduler, rank: int,
                           optimizer_for_lr=None) -> dict[str, Any]:
    """The optimiser (unless already loaded), schedule [D7] and RNG [D4] parts of load_checkpoint."""
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
        optimizer = optimizer or optimizer_for_lr
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

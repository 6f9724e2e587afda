"""Checkpoints: the model (PEFT adapter or full safetensors), optimiser, scheduler, RNG and data order.

    checkpoints/step-000040/
        adapter_model.safetensors + adapter_config.json    (LoRA: standard PEFT format), or
        model.safetensors + config.json                   (full weights)
        tokenizer files
        trainer_state.pt    optimiser, scheduler, every rank's RNG states, step, data-order state
        trainer_state.json  the human-readable part (step, ranks, sha256 of each rank's trainable weights)

[D1] A checkpoint folder is complete or absent: it is written into a temporary folder and renamed
     (grpo.run.atomic_dir). `--resume` takes the newest complete one.
[D2] The adapter's `base_model_name_or_path` is rewritten to the name the run loaded (e.g.
     `smollm2-135m`), so `load_model(<checkpoint>)` finds the base again on any machine.
[D3] Only the newest `keep` checkpoints are kept; `final/` is never deleted.
[D4] Several ranks: the weights and optimiser are the same on every rank (grpo.distributed [D3]) and
     rank 0 writes them; each rank's RNG states differ (each samples its own completions), so all of
     them are gathered into the checkpoint and each rank restores its own on resume. A run resumed on
     more ranks than wrote the checkpoint starts the extra ranks' streams from their seed.
[D5] No NaN model is ever saved: a trainable weight holding NaN or ±inf stops the save (issue #13;
     grpo.optim [D1] keeps non-finite steps from reaching the weights in the first place).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from grpo.run import atomic_dir, atomic_write_json, rng_state, set_rng_state


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
        torch.save({"step": step, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "rng_per_rank": rng_states or [rng_state()], "data": data_state or {}},
                   tmp / "trainer_state.pt")
        atomic_write_json(tmp / "trainer_state.json", {"step": step, **(info or {})})
    return path


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
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    rngs = state["rng_per_rank"] if "rng_per_rank" in state else [state["rng"]]  # "rng": one-process format
    if rank < len(rngs):
        set_rng_state(rngs[rank])
    return {"step": state["step"], "data": state.get("data", {}), "ranks": len(rngs)}


def prune_checkpoints(folder: str | Path, *, keep: int) -> None:
    """Delete all but the newest `keep` complete step-* folders [D3]."""
    done = sorted(p for p in Path(folder).glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)

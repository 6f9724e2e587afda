"""Shared builders for the trainer tests: a tiny model, a toy task with a learnable reward."""
from __future__ import annotations

import math

import torch

from grpo.models import load_model
from grpo.optim import make_optimizer, make_scheduler
from grpo.settings import GRPOSettings
from grpo.tasks import Task
from grpo.trainer import GRPOTrainer

PROMPTS = ["Say something.", "Write a line.", "Go on.", "Tell me more.", "Continue.", "Speak."]


def vowel_fraction(prompts, completions, **_):
    """Toy reward a random 2-layer model can learn fast: fraction of characters that are vowels."""
    out = []
    for c in completions:
        text = c if isinstance(c, str) else c[0]["content"]
        out.append(sum(ch in "aeiou" for ch in text) / max(1, len(text)))
    return out


def toy_task() -> Task:
    rows = [{"prompt": [{"role": "user", "content": p}], "prompt_suffix": ""} for p in PROMPTS]
    return Task(name="toy", rows=rows, reward_names=["vowel_fraction"], reward_funcs=[vowel_fraction])


def make_trainer(cache_dir, *, seed: int = 0, init_seed: int | None = None, prepare=None,
                 **overrides) -> GRPOTrainer:
    """A GRPOTrainer on tiny-llama + LoRA; `seed` is the settings' (data order), `init_seed` (default
    `seed`) the torch seed the fresh adapter is drawn with; `prepare(model)` runs before the optimiser is
    built (a broadcast, grpo.sharding.prepare_model)."""
    settings = dict(model="tiny-llama", lora_r=8, lora_alpha=16, lora_dropout=0.0, prompts_per_step=2,
                    num_generations=4, max_completion_length=12, micro_batch_size=8, learning_rate=3e-3)
    cfg = GRPOSettings(seed=seed, **{**settings, **overrides})
    torch.manual_seed(seed if init_seed is None else init_seed)
    model, tok = load_model("tiny-llama", cache_dir=cache_dir, use_lora=cfg.use_lora, lora_r=cfg.lora_r,
                            lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, dtype=cfg.dtype,
                            device=cfg.device)
    if prepare is not None:
        prepare(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, name=cfg.optimizer, lr=cfg.learning_rate, weight_decay=0.0)
    sched = make_scheduler(opt, kind="constant", warmup_steps=0, total_steps=cfg.max_steps)
    return GRPOTrainer(cfg, model, tok, toy_task(), opt, sched)


def trainable_state(trainer, *, grads: bool = False) -> dict[str, torch.Tensor]:
    """Trainable weights by name; with `grads`, also each one's last gradient as `name.grad`."""
    params = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
    state = {n: p.detach().clone() for n, p in params}
    if grads:
        state.update({f"{n}.grad": p.grad.detach().clone() for n, p in params if p.grad is not None})
    return state


def assert_same_update(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """Two `trainable_state(…, grads=True)` after one optimiser step describe the same update (fp32).

    The gradient is the real check: AdamW's first step is ≈ lr·sign(g), which would hide a wrong
    scale. Batching the prompts differently (micro-batches, ranks) rounds sums differently, so the
    gradient is compared relative to its largest entry, and a weight whose gradient sits near AdamW's
    eps may move by a rounding-dependent bit.
    """
    assert got.keys() == want.keys() and any(k.endswith(".grad") for k in want), "no gradients recorded"
    scale = max(float(v.abs().max()) for k, v in want.items() if k.endswith(".grad"))
    assert scale > 0, "the gradient is zero: the comparison would prove nothing"
    exact = all(v.dtype == torch.float64 for v in want.values())  # float64: 1e-10, the issue #12 target
    for k in want:
        if exact:
            atol, rtol = (1e-10 * scale, 1e-10) if k.endswith(".grad") else (1e-10, 1e-10)
        else:
            atol, rtol = (1e-5 * scale, 1e-4) if k.endswith(".grad") else (5e-6, 1e-5)
        torch.testing.assert_close(got[k], want[k], atol=atol, rtol=rtol, msg=k)


def finite(x) -> bool:
    return x is None or math.isfinite(x)

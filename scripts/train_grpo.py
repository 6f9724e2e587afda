"""Train a language model with GRPO (and its DAPO / Dr. GRPO / GSPO / LUSPO / CISPO / SAPO / VESPO variants).

    python scripts/train_grpo.py                                   # the main job: smollm2-135m + LoRA, drill task
    python scripts/train_grpo.py --config configs/gsm8k.json --base-model rl_sft_model
    torchrun --nproc_per_node 2 scripts/train_grpo.py --model tiny-llama --max-steps 5    # DDP (gloo on CPU)
    torchrun --nproc_per_node 2 scripts/train_grpo.py --use-lora false --sharding fsdp2  # FSDP2 (grpo/sharding.py)
    .venv-vllm/bin/python scripts/train_grpo.py --use-vllm true    # sample with vLLM (grpo/vllm_engine.py)

One step (grpo/trainer.py, ALGORITHMS.md §2–3):
    1. sample    B prompts (split over ranks) × G completions, recording per-token log-probs/entropy
    2. reward    every reward function on every completion; weighted sum (+ soft overlong punishment)
    3. advantage A = (r − mean_group) / (std + ε)  (scale_rewards group / batch / none)
    4. update    μ passes: micro-batched forward/backward of the loss_type's surrogate (+ β·KL), one
                 all-reduce of the gradients across ranks, clip, AdamW step, LR schedule
    5. log/save  metrics.jsonl + progress bar; checkpoint every save_steps; reward curve PNG at the end

Outputs in outputs/<run_name>/: config.json, metrics.jsonl, checkpoints/step-N/, final/, reward_curve.png,
and with --eval-steps N eval.jsonl: held-out metrics (grpo.evaluation) at step 0, every N steps and at the end.
One run per folder (grpo.run_claim): a fresh run refuses a folder that holds a run (use `--resume`, another
`--run-name`, or `--overwrite` to replace it), and a second run into a folder in use stops at once.
Ctrl-C (exit 130) and SIGTERM from a scheduler (exit 143) save a checkpoint before exiting; `--resume`
continues from the newest intact one (damaged ones are skipped, each named on one line). On resume the
settings that decide what is trained (FROZEN_ON_RESUME) must not change; the others apply and each leg's
settings are saved beside config.json as config.resume-N.json.

Metrics (metrics.jsonl, one line per step):
    reward, reward_std                 mean and std of the total reward over all completions
    rewards/<f>/mean, rewards/<f>/std  the same per reward function (before weighting)
    frac_reward_zero_std               fraction of groups whose rewards are all equal (A = 0: no signal)
    advantage_mean/std/abs_max         advantage statistics (mean is 0 up to float error per group)
    loss                               the optimised loss (at μ = 1 its value is ~0 while its gradient
                                       is not: watch grad_norm and frac_reward_zero_std instead)
    kl                                 mean k3 KL to the reference (β > 0 only; ρ·k3 with use_bias_correction_kl)
    entropy                            mean per-token entropy of the current policy during the update
    sampling_entropy                   mean per-token entropy recorded while sampling (with vLLM: of the
                                       trainer's forward over the samples, before the update; with
                                       sampler_dtype=bfloat16: of the bf16 distribution sampled)
    ratio_mean                         mean importance ratio (1 at μ = 1)
    clip_low / clip_high / clip_region fraction of tokens clipped below (A<0) / above (A>0) / either
                                       (the clipped loss_types: grpo, dapo, dr_grpo, bnpo, luspo)
    cispo_clip_ratio                   cispo: fraction of tokens whose weight is capped (ρ > ε_max, A > 0)
    vespo/phi_seq_mean                 vespo: mean sequence weight φ(w) over sequences with a token (1 at μ = 1)
    off_policy_masked_frac             fraction of those sequences the off-policy mask drops (0 at μ = 1)
    completion_length(_min/_max)       completion tokens up to and including EOS
    truncated_frac                     fraction of completions that hit max_completion_length
    grad_norm                          gradient norm before clipping (mean over the μ passes)
    skipped_steps                      optimiser steps not applied: non-finite loss or gradient norm
    rewards/non_finite                 ±inf rewards treated as None (non_finite_rewards=none)
    lr                                 learning rate after the step
    num_tokens, num_sequences_trained  tokens and sequences in the loss (after masking/dropping)
    time/generate, time/score, time/update   seconds spent in each phase
    time/sync_weights                  use_vllm: seconds pushing the trainer's weights into vLLM
    sampling/sampling_logp_difference/mean|max   use_vllm or sampler_dtype=bfloat16: |lp_trainer − lp_sampler|
                                       over completion tokens
    sampling/importance_sampling_ratio/min|mean|max   the same runs: the IS weight (grpo.correction), also
                                       logged with vllm_importance_sampling_correction off
    tokens_per_second                  completion tokens generated per second of the whole step
    prompts/truncated                  prompts cut from the left to max_prompt_length (prompt_overflow)
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo import distributed as dd  # noqa: E402
from grpo.config import UserError, cli_main, parse_settings  # noqa: E402
from grpo.loop import train_steps  # noqa: E402
from grpo.models import (add_reference_adapter, adapter_base_name, is_adapter,  # noqa: E402
                         load_model_from_settings, materialise_named_model, resolve_model_path, use_bf16)
from grpo.plots import plot_reward_curve  # noqa: E402
from grpo.run import run_folder, seed_everything  # noqa: E402
from grpo.run_claim import MODEL_KEYS, check_run_folder, claim_run_folder  # noqa: E402
from grpo.settings import GRPOSettings  # noqa: E402
from grpo.sharding import prepare_model  # noqa: E402
from grpo.trainer import GRPOTrainer  # noqa: E402


@dataclass
class TrainGRPOSettings(GRPOSettings):
    """GRPOSettings with the main job's defaults: `python scripts/train_grpo.py` with no arguments trains
    smollm2-135m + LoRA on the drill task and reports held-out accuracy (docs/recipes.md, "The main job")."""

    task: str = "drill"
    """drill (the main job's), arithmetic, gsm8k, reasoncheck, text_to_sql or score_model (grpo/tasks.py)"""
    prompts_per_step: int = 8
    """B: prompts per generation batch, over all ranks"""
    num_generations: int = 8
    """G: completions sampled per prompt"""
    max_completion_length: int = 32
    """L: new tokens per completion at most"""
    max_steps: int = 50
    """generation batches to train on"""
    save_steps: int = 10
    """write a checkpoint every N steps (0 = only at the end)"""
    eval_steps: Optional[int] = None
    """held-out evaluation before the first step, every N steps and after the last (0 = off); null = every 10
    steps for the drill task (the main job), off for the others"""
    base_model: str = ""
    """alias of --model for the GSM8K pipeline (e.g. --base-model rl_sft_model); wins when set"""

    def validate(self) -> None:
        """eval_steps null → 10 for the drill task (the main job), else 0 (after the base classes' checks [D9])."""
        if self.eval_steps is None:
            self.eval_steps = 10 if self.task == "drill" else 0


# what is trained: `--resume` refuses to change these (grpo.run_claim [C4])
FROZEN_ON_RESUME = (*MODEL_KEYS, "base_model", "task", "dataset", "dataset_limit", "reward_funcs", "reward_weights",
                    "prompt_suffix", "system_prompt", "num_generations", "loss_type", "scale_rewards",
                    "importance_sampling_level", "beta", "seed", "max_prompt_length", "prompt_overflow")


def start_engine(s: TrainGRPOSettings, model, model_name: str, *, rank: int):
    """vLLM on the base checkpoint (the trainer's weights follow by sync; grpo.vllm_engine)."""
    from grpo.vllm_engine import VLLMEngine, model_dtype

    cache = s.model_cache_dir or None
    path = resolve_model_path(adapter_base_name(model_name, cache_dir=cache), cache_dir=cache)
    device = next(model.parameters()).device
    engine = VLLMEngine.start(s, path, dtype=model_dtype(s.dtype, bf16=use_bf16(device, s.bf16)), seed=s.seed + rank)
    if rank == 0:
        print(f"vLLM engine started in {engine.start_seconds:.1f}s", file=sys.stderr)
    return engine


def held_out_evaluation(s: TrainGRPOSettings, model, tok, task) -> dict:
    """The loop's `evaluate` (grpo.evaluation, greedy) and the metric it prints: the rate of the only reward
    function (the accuracy for the drill task), else the weighted reward."""
    from grpo.evaluation import evaluate_task

    weights = s.reward_weights or [1.0] * len(task.reward_funcs)

    def evaluate() -> dict:
        return evaluate_task(model, tok, task, weights=weights, batch_size=s.eval_batch_size,
                             max_new_tokens=s.eval_max_new_tokens or s.max_completion_length,
                             max_prompt_length=s.max_prompt_length, bf16=s.bf16, non_finite=s.non_finite_rewards,
                             desc="eval").metrics

    return {"evaluate": evaluate,
            "eval_postfix": f"{task.reward_names[0]}/rate" if len(task.reward_names) == 1 else "reward"}


def main() -> None:
    s = parse_settings(TrainGRPOSettings, description=__doc__, print_config=dd.env_rank() == 0, section="grpo")
    check_run_folder(run_folder(s.run_name), s, frozen=FROZEN_ON_RESUME)  # cheap, before anything loads
    materialise_named_model(s.base_model or s.model, cache_dir=s.model_cache_dir or None)  # before torch.distributed
    rank, _ = dd.init_distributed(s.device)  # gloo or NCCL, as the device (grpo.distributed)
    seed_everything(s.seed + rank)  # ranks sample different completions; data order is shared

    task = s.load_task(limit=s.dataset_limit)
    eval_task = s.load_task(split=s.eval_split, limit=s.eval_num_examples) if s.eval_steps else None
    if eval_task is not None and not eval_task.rows:
        raise UserError(f"eval_split: task {s.task!r} [{s.eval_split}] has no rows")
    run = claim_run_folder(run_folder(s.run_name), s, rank=rank, frozen=FROZEN_ON_RESUME,
                           outputs=("reward_curve.png",))  # lock, config (grpo.run_claim)
    model_name = s.base_model or s.model
    model, tok = load_model_from_settings(s, model=model_name)
    dd.broadcast_trainable(model)  # the seed differs per rank: rank 0's initial adapter everywhere
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("the model has no trainable parameters (use_lora=false loads a frozen 4-bit model?)")
    ref_model = None
    if s.beta > 0 and not s.use_lora:
        ref_model, _ = load_model_from_settings(s, model=model_name, trainable=False)
    elif s.beta > 0 and is_adapter(model_name, cache_dir=s.model_cache_dir or None):
        add_reference_adapter(model)  # the KL anchors to the adapter as loaded, not the bare base
    for m in (model, ref_model):  # sharding = fsdp2: split over the ranks, before the optimiser sees them
        if m is not None:
            prepare_model(m, s.sharding)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = s.make_optimizer(params, total_steps=s.max_steps * s.num_iterations)
    engine = start_engine(s, model, model_name, rank=rank) if s.use_vllm else None
    trainer = GRPOTrainer(s, model, tok, task, optimizer, scheduler, ref_model=ref_model, engine=engine)

    result = train_steps(trainer, s=s, run=run, model=model, tokenizer=tok, optimizer=optimizer,
                         scheduler=scheduler, max_steps=s.max_steps, rank=rank, desc="grpo",
                         base_name=adapter_base_name(model_name, cache_dir=s.model_cache_dir or None),
                         postfix=("reward", "completion_length"), eval_steps=s.eval_steps,
                         **(held_out_evaluation(s, model, tok, eval_task) if eval_task else {}))
    dd.shutdown()  # every rank leaves torch.distributed together (grpo.distributed [D5])
    if engine is not None:
        engine.close()  # after: vLLM's shutdown destroys the default process group (grpo.vllm_engine [V8])
    if result.interrupted:
        sys.exit(result.exit_code)  # 130 Ctrl-C, 143 SIGTERM
    if rank == 0:
        png = plot_reward_curve(run.metrics_file, run.path / "reward_curve.png", title=f"{s.task} · {model_name}")
        print(f"done: {result.step} steps in {result.seconds:.0f}s; model in {run.final}; curve {png}")


if __name__ == "__main__":
    cli_main(main)

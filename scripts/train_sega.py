"""Train a language model with SEGA: entropy-guided cognitive filtering + Self-Evaluated Group Advantage.

GEM / GenPref-SEGA (arXiv 2511.13007), stage 2; ALGORITHMS.md §4. Stage 1 (reflective SFT on the `chosen`
answers) is `scripts/train_sft.py --mode pairs`. The original README's commands work as written:

    python scripts/train_sft.py --mode pairs --model_name_or_path smollm2-135m --train_jsonl bundled \\
        --out_dir outputs/sft-demo --epochs 1 --lr 1e-5 --batch_size 1
    python scripts/train_sega.py --model_name_or_path outputs/sft-demo --train_jsonl bundled \\
        --out_dir outputs/sega-demo --k 4 --lambda_fork 0.4 --top_m 0.1 --reward_mapping softmax --beta 1.0 \\
        --gen_max_new_tokens 256 --temperature 1.0 --top_p 0.95 --epochs 1 --lr 5e-6 --batch_size 1
    python scripts/train_sega.py --config configs/sega_demo.yaml    # the same pipeline, SFT run `sft-demo` first
    torchrun --nproc_per_node 2 scripts/train_sega.py --model tiny-llama --batch-size 2 --max-steps 3  # DDP
    torchrun --nproc_per_node 2 scripts/train_sega.py --model tiny-llama --sharding fsdp2 --batch-size 2  # FSDP2

Flag aliases: --model_name_or_path → --model, --train_jsonl → --dataset, --out_dir → --run_name,
--lr → --learning_rate. `--beta` is the implicit-reward scale of the final evaluation; the KL
coefficient is `--kl_coef` (sega/settings.py).

One step (sega/trainer.py):
    1. sample     batch_size prompts (split over ranks) × k candidates, chat template, T = temperature
    2. score      Eq. 1 per candidate: S = −H_final + λ·mean(top-m entropies of the reasoning span),
                  from the policy at T = 1, no grad; final span after a marker or the last final_frac
    3. filter     valid = non-empty candidates, minus low outliers (--drop_low_outliers) or all but the
                  (top, bottom) pair (--pairs)
    4. advantage  r = S or softmax(S/τ); A = r − mean(r) over the valid candidates of each prompt (Eq. 2)
    5. update     L = (1/B) Σ_q −(1/k_valid) Σ_i A_i·Σ_t lp_θ, micro-batched (+ PPO ratio when
                  num_iterations > 1, + kl_coef·k3 KL), gradient sum over ranks, clip, AdamW, schedule
then metrics.jsonl, a checkpoint every save_steps; at the end final/, score_curve.png and the held-out
preference accuracy (sega.implicit_reward) in pref_accuracy.json.

Outputs in outputs/<run_name>/ (or --out_dir): config.json, metrics.jsonl, checkpoints/step-N/, final/,
score_curve.png, pref_accuracy.json. One run per folder (grpo.run_claim): a fresh run refuses a folder that
holds a run (`--resume`, another `--run-name`, or `--overwrite`), and a folder in use by another run is
refused at once. Ctrl-C (exit 130) and SIGTERM (exit 143) save a checkpoint first; `--resume` continues
from the newest intact one, refuses changes to FROZEN_ON_RESUME, and saves each leg's settings as
config.resume-N.json.

Metrics (metrics.jsonl, one line per step; statistics over the valid candidates of all ranks):
    score, score_std              mean and std of the Eq. 1 score S
    score_group_range             mean over prompts of max S − min S over all k (0: nothing to learn)
    h_final                       mean entropy of the final span (lower = more confident answer)
    fork_entropy                  mean of the top-m reasoning entropies (higher = more exploration)
    reward, reward_std            mean and std of the mapped reward r (identity: = score)
    advantage_mean/std/abs_max    advantage statistics (the mean is 0 up to float error)
    frac_zero_advantage_groups    fraction of prompts whose advantages are all 0 (no gradient)
    valid_frac                    fraction of candidates in the loss (after filtering)
    loss, pg_loss                 the optimised loss, and its policy part without the KL term
    kl                            mean k3 KL to the reference (kl_coef > 0 only)
    ratio_mean, clip_fraction     mean importance ratio and fraction of clipped tokens (1 and 0 at μ = 1)
    completion_length(_max)       candidate tokens up to and including EOS
    truncated_frac                fraction of candidates that hit gen_max_new_tokens
    grad_norm                     gradient norm before clipping (mean over the μ passes)
    skipped_steps                 optimiser steps not applied: non-finite loss or gradient norm
    lr, epoch                     learning rate after the step; pass over the prompts (0-based)
    num_tokens                    completion tokens of valid candidates in the loss
    time/generate, time/score, time/update, tokens_per_second   seconds per phase; generated tokens/s
    prompts/truncated             prompts cut from the left to max_prompt_length (prompt_overflow)
pref_accuracy.json: n, beta, accuracy, ties, accuracy_length_normalized, ties_length_normalized,
    reward_chosen_mean, reward_rejected_mean, margin_mean (scripts/eval_pref_accuracy.py).
"""
from __future__ import annotations

import math
import sys
from grpo.sharding import prepare_model  # noqa: E402
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo import distributed as dd  # noqa: E402
from grpo.config import UserError, cli_main, parse_settings  # noqa: E402
from grpo.data.rows import DataError  # noqa: E402
from grpo.loop import train_steps  # noqa: E402
from grpo.models import (add_reference_adapter, adapter_base_name, is_adapter,  # noqa: E402
                         load_model_from_settings, materialise_named_model)
from grpo.plots import plot_reward_curve  # noqa: E402
from grpo.run import atomic_write_json, run_folder, seed_everything  # noqa: E402
from grpo.run_claim import MODEL_KEYS, check_run_folder, claim_run_folder  # noqa: E402
from sega.data import load_pairs  # noqa: E402
from sega.implicit_reward import preference_accuracy  # noqa: E402
from sega.settings import SegaSettings  # noqa: E402
from sega.trainer import SegaTrainer  # noqa: E402

ALIASES = {"model_name_or_path": "model", "train_jsonl": "dataset", "out_dir": "run_name", "lr": "learning_rate"}
# what is trained: `--resume` refuses to change these (grpo.run_claim [C4])
FROZEN_ON_RESUME = (*MODEL_KEYS, "dataset", "split", "dataset_limit", "k", "lambda_fork", "top_m", "final_frac",
                    "final_window", "markers", "reward_mapping", "tau", "adv_norm", "length_normalize", "kl_coef",
                    "score_include_eos", "seed", "max_prompt_length", "prompt_overflow")


def load_rows(source: str, split: str, limit: int | None = None) -> list[dict]:
    try:
        rows = load_pairs(source, split, limit)
    except DataError as e:
        raise UserError(str(e)) from None
    if not rows:
        raise UserError(f"no preference pairs in {source} [{split}]")
    return rows


def main() -> None:
    # settings, data (before the slow model load, so a bad file fails fast), model
    s = parse_settings(SegaSettings, description=__doc__, print_config=dd.env_rank() == 0, section="sega",
                       aliases=ALIASES)
    check_run_folder(run_folder(s.run_name), s, frozen=FROZEN_ON_RESUME)  # cheap, before anything loads
    materialise_named_model(s.model, cache_dir=s.model_cache_dir or None)  # before torch.distributed
    rank, _ = dd.init_distributed(s.device)  # gloo or NCCL, as the device (grpo.distributed)
    seed_everything(s.seed + rank)  # ranks sample different candidates; the data order is shared
    rows = load_rows(s.dataset, s.split, s.dataset_limit)
    eval_rows = load_rows(s.eval_dataset, s.eval_split) if s.eval_dataset and rank == 0 else []
    run = claim_run_folder(run_folder(s.run_name), s, rank=rank, frozen=FROZEN_ON_RESUME,
                           outputs=("score_curve.png", "pref_accuracy.json"))  # lock, config (grpo.run_claim)
    model, tok = load_model_from_settings(s)
    dd.broadcast_trainable(model)  # the seed differs per rank: rank 0's initial adapter everywhere
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("the model has no trainable parameters (load_in_4bit needs use_lora)")
    base_name = adapter_base_name(s.model, cache_dir=s.model_cache_dir or None)
    ref_model = load_model_from_settings(s, trainable=False)[0] if s.kl_coef > 0 and not s.use_lora else None
    if s.kl_coef > 0 and ref_model is None and is_adapter(s.model, cache_dir=s.model_cache_dir or None):
        add_reference_adapter(model)  # the KL anchors to the SFT adapter as loaded, not the bare base
    for m in (model, ref_model):  # sharding = fsdp2: split over the ranks, before the optimiser sees them
        if m is not None:
            prepare_model(m, s.sharding)

    max_steps = s.max_steps or math.ceil(s.epochs * len(rows) / s.batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = s.make_optimizer(params, total_steps=max_steps * s.num_iterations)
    try:
        trainer = SegaTrainer(s, model, tok, rows, optimizer, scheduler, ref_model=ref_model)
    except ValueError as e:
        raise UserError(str(e)) from None

    result = train_steps(trainer, s=s, run=run, model=model, tokenizer=tok, optimizer=optimizer,
                         scheduler=scheduler, max_steps=max_steps, rank=rank, desc="sega", base_name=base_name,
                         postfix=("score", "completion_length"))  # each step: 1.-5. of the docstring
    dd.shutdown()  # every rank leaves torch.distributed together (grpo.distributed [D5])
    if result.interrupted:
        sys.exit(result.exit_code)  # 130 Ctrl-C, 143 SIGTERM
    if rank != 0:
        return
    png = plot_reward_curve(run.metrics_file, run.path / "score_curve.png", keys=("score",),
                            title=f"SEGA · {s.model}")
    print(f"done: {result.step} steps in {result.seconds:.0f}s; model in {run.final}; curve {png}")
    if eval_rows:  # held-out preference accuracy of the trained policy
        acc = preference_accuracy(model, tok, eval_rows, beta=s.beta, batch_size=s.eval_batch_size)
        out = atomic_write_json(run.path / "pref_accuracy.json",
                                {**acc, "model": str(run.final), "data": s.eval_dataset, "split": s.eval_split})
        print(f"preference accuracy {acc['accuracy']:.4f} (ties {acc['ties']:.4f}, length-normalised "
              f"{acc['accuracy_length_normalized']:.4f}) on {acc['n']} pairs; {out}")


if __name__ == "__main__":
    cli_main(main)

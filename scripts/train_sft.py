"""Supervised fine-tuning: the GSM8K format stage of system B, or reflective SFT on preference pairs.

GSM8K (system B, REWARDS.md B): teach the `<start_working_out>…<end_working_out><SOLUTION>…</SOLUTION>`
format on GSM8K reference solutions. The prompt ends with `<start_working_out>`, the target is
"{reasoning}<end_working_out><SOLUTION>{answer}</SOLUTION>" + EOS (grpo.data.gsm8k.sft_completion).

    python scripts/train_sft.py --config configs/gsm8k.json --stage full      # 1024 examples → sft_model
    python scripts/train_sft.py --config configs/gsm8k.json --stage rl_prep   # 256 examples → rl_sft_model
    python scripts/train_sft.py --config configs/gsm8k.json --stage rl_prep --dataset ../shared/data/gsm8k
    torchrun --nproc_per_node 2 scripts/train_sft.py --config configs/gsm8k.json   # data parallel (grpo.sft [D7])
    torchrun --nproc_per_node 2 scripts/train_sft.py --use-lora false --sharding fsdp2   # FSDP2 (grpo/sharding.py)

Pairs (SEGA stage 1, "reflective SFT", issue 6): cross-entropy on `chosen` given the chat-formatted
`prompt` (one user message) of preference pairs `{"prompt", "chosen", "rejected"}`; the flags of the
original README work (`--model_name_or_path`, `--train_jsonl`, `--out_dir`, `--lr`):

    python scripts/train_sft.py --mode pairs --model_name_or_path smollm2-135m \\
        --train_jsonl bundled --out_dir outputs/sft-demo --epochs 1 --lr 1e-5 --batch_size 1

Config files: a flat JSON/YAML of the settings below, or a sectioned one (configs/gsm8k.json) of which
this script reads `common` then `sft` (grpo.config [D6]); flags win over both.

Steps:
    1. settings, seed, training rows (GSM8K rows or preference pairs)
    2. claim the run folder outputs/<run_name>/ + config.json (a folder that holds a run is refused unless
       `--overwrite`; one in use by another run is refused at once: grpo.run_claim), then load the model
       (LoRA adapter by default) and tokenizer
    3. rows → (prompt text, completion text) → tokenised examples, labels −100 on the prompt (grpo.sft)
    4. per optimiser step: batch_size × grad_accum examples, token-mean cross-entropy on completion
       tokens, gradient clipping, AdamW, warm-up + linear/cosine schedule (grpo.sft.train_sft)
    5. save the adapter (or full weights) + tokenizer to outputs/<run_name>/final

Logged metrics (metrics.jsonl, one line per optimiser step):
    loss               mean −log p of the step's completion tokens (prompt and padding excluded)
    token_accuracy     fraction of completion tokens whose argmax prediction is the target token
    grad_norm          global gradient norm before clipping
    skipped_steps      1 when the step was not applied (non-finite loss or gradient norm, grpo.optim [D1])
    lr                 learning rate used for the step
    epoch              pass over the data the step belongs to (0-based)
    num_tokens         completion tokens in the step (the loss normaliser |C|)
    examples           examples in the step (batch_size × grad_accum, less at the end of an epoch)
    seconds            wall time of the step
    tokens_per_second  prompt + completion tokens processed per second (forward and backward)
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from grpo.sharding import prepare_model  # noqa: E402
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo import distributed as dd  # noqa: E402
from grpo.config import UserError, at_least, cli_main, parse_settings, path_name  # noqa: E402
from grpo.data import DataError, load_gsm8k, to_working_out_prompts  # noqa: E402
from grpo.models import (ModelSettings, adapter_base_name, load_model_from_settings,  # noqa: E402
                         materialise_named_model)
from grpo.run import run_folder, seed_everything  # noqa: E402
from grpo.run_claim import check_run_folder, claim_run_folder  # noqa: E402
from grpo.sft import (SFTLoopSettings, chat_prompt_text, encode_example,  # noqa: E402
                      train_sft)
from sega.data import load_pairs  # noqa: E402

STAGE_EXAMPLES = {"full": 1024, "rl_prep": 256}  # REWARDS.md B
DEFAULT_RUN = {"full": "sft_model", "rl_prep": "rl_sft_model", "pairs": "sft_pairs"}
ALIASES = {"model_name_or_path": "model", "train_jsonl": "dataset", "out_dir": "run_name", "lr": "learning_rate"}


@dataclass
class SFTSettings(ModelSettings, SFTLoopSettings):
    mode: Literal["gsm8k", "pairs"] = "gsm8k"
    """gsm8k: system B's working-out format on GSM8K rows; pairs: the `chosen` answers of preference pairs"""
    stage: Literal["full", "rl_prep"] = "full"
    """gsm8k mode: `full` (1024 examples → sft_model) or `rl_prep` (256 examples → rl_sft_model)"""
    dataset: str | None = None
    """training rows: hub id, .jsonl/.json file or folder with {split}.jsonl; `arithmetic` (bundled GSM8K-format
    task) or `bundled` (bundled pairs); default openai/gsm8k (gsm8k mode), bundled (pairs mode)"""
    split: str = "train"
    """split of a hub dataset, folder or bundled set"""
    num_examples: int | None = None
    """train on the first N rows; default 1024 (full), 256 (rl_prep), all (pairs)"""
    max_seq_length: int = 1024
    """longest prompt + completion in tokens; longer completions are cut on the right"""
    run_name: str | None = None
    """output folder: a name under outputs/ ($GRPO_OUTPUT_ROOT) or a path containing '/';
    default sft_model (full), rl_sft_model (rl_prep), sft_pairs (pairs)"""
    overwrite: bool = False
    """replace the run already in this folder (without it a folder that holds a run is refused)"""

    def validate(self) -> None:
        """Ranges, checked before anything loads (grpo.config [D9]; SFTLoopSettings checks its own)."""
        at_least(self, "num_examples", 1, why="null = the mode's default")
        at_least(self, "max_seq_length", 1)
        path_name(self, "run_name")  # null = the mode's default name


def training_rows(s: SFTSettings) -> list[tuple[list[dict[str, str]], str, str]]:
    """The training rows as (chat messages, prompt suffix, completion text)."""
    try:
        if s.mode == "gsm8k":
            limit = s.num_examples if s.num_examples is not None else STAGE_EXAMPLES[s.stage]
            rows = to_working_out_prompts(load_gsm8k(s.dataset or "openai/gsm8k", s.split, limit))
            return [(r["prompt"], r["prompt_suffix"], r["sft_completion"]) for r in rows]
        pairs = load_pairs(s.dataset or "bundled", s.split, s.num_examples)
    except DataError as e:
        raise UserError(str(e)) from None
    # The same messages as SEGA's sampling and preference scoring: one user turn holding `prompt`.
    return [([{"role": "user", "content": p["prompt"]}], "", p["chosen"]) for p in pairs]


def main() -> None:
    # 1. settings, seed, data (checked before the slow model load)
    s = parse_settings(SFTSettings, section="sft", aliases=ALIASES, description=__doc__,
                       print_config=dd.env_rank() == 0)  # ranges checked there (SFTSettings.validate)
    folder = run_folder(s.run_name or DEFAULT_RUN[s.stage if s.mode == "gsm8k" else "pairs"])
    check_run_folder(folder, s)  # cheap, before anything loads (grpo.run_claim)
    materialise_named_model(s.model, cache_dir=s.model_cache_dir or None)  # before torch.distributed
    rank, _ = dd.init_distributed(s.device)
    seed_everything(s.seed)
    rows = training_rows(s)
    if not rows:
        raise UserError(f"no training rows in {s.dataset} [{s.split}]")

    # 2. run folder (lock, config), model
    run = claim_run_folder(folder, s, rank=rank)
    model, tok = load_model_from_settings(s, trainable=True)
    dd.broadcast_trainable(model)  # rank 0's initial adapter on every rank (grpo.distributed [D3])
    prepare_model(model, s.sharding)  # sharding = fsdp2: split over the ranks (grpo.sharding)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n_train == 0:
        raise UserError("the model has no trainable parameters (load_in_4bit needs use_lora)")

    # 3. examples: prompt text exactly as generation builds it, labels only on the completion
    encoded = [encode_example(tok, chat_prompt_text(tok, messages, suffix), completion, max_length=s.max_seq_length)
               for messages, suffix, completion in rows]
    examples = [e for e in encoded if e is not None]
    if not examples:
        raise UserError(f"no example has a completion token within max_seq_length={s.max_seq_length}")
    if rank == 0:
        print(f"{len(examples)} examples ({len(rows) - len(examples)} dropped: prompt >= max_seq_length), "
              f"{sum(e.num_tokens for e in examples)} completion tokens; {n_train:,} trainable parameters",
              file=sys.stderr)

    # 4.-5. train, save final/
    summary = train_sft(model, tok, examples, s=s, run=run, bf16=s.bf16,
                        base_name=adapter_base_name(s.model, cache_dir=s.model_cache_dir or None))
    dd.shutdown()  # every rank leaves torch.distributed together (grpo.distributed [D5])
    if rank == 0:
        print(f"loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f} in {summary['steps']} steps "
              f"({summary['seconds']:.1f} s); model saved to {summary['final']}")


if __name__ == "__main__":
    cli_main(main)

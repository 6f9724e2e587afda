"""Supervised fine-tuning (SFT): token-mean cross-entropy on completion tokens given a prompt.

Used by scripts/train_sft.py for the GSM8K format stage of system B (REWARDS.md B: `full` 1024 and
`rl_prep` 256 examples) and for reflective SFT on the `chosen` answers of preference pairs (SEGA
stage 1, ALGORITHMS.md §4, issue 6 item 2). Over the examples i of one optimiser step
(batch_size × grad_accum rows, in micro-batches of batch_size):

    L(θ) = −(1/|C|) Σ_{(i,t) ∈ C} log p_θ(y_{i,t} | x_i, y_{i,<t})

    symbol      code            meaning
    x_i         labels == −100  prompt tokens: chat template + generation prompt (+ suffix)
    y_{i,t}     labels[i, t]    completion tokens: the target answer, then EOS
    C, |C|      num_tokens      all (i, t) with a label, over every micro-batch of the step
    log p_θ     −cross_entropy  of logits[:, t−1] against labels[:, t] (the usual one-token shift)

Implementation details:
[D1] Joint tokenisation: prompt + completion are tokenised as one text, and a token is a completion
     token iff its character span ends after the prompt text (offset mapping). Encoding the two apart
     and concatenating can give ids never seen in real text when BPE merges across the boundary
     ("the " ‖ "apples" → "the", " apples"); a straddling token is a target (the first one carrying
     completion text), the rule of sega.implicit_reward [D1], so SFT on `chosen` raises exactly the
     Σ log p that preference accuracy compares.
[D2] The completion ends with the tokenizer's EOS id (for chat models the end-of-turn token
     `<|im_end|>`), appended as an id, so the model learns to stop where `generate` stops.
[D3] An example longer than `max_length` keeps its prompt and loses the end of its completion; one with
     no completion token left is dropped, and the caller reports how many were.
[D4] Right padding, labels −100 and attention mask 0 on pads: real tokens keep positions 0…L−1 as in an
     unpadded forward, so every example has the same loss in a padded batch as alone (tested).
[D5] Token mean over the whole optimiser step: each micro-batch's *sum* is divided by |C| of the step,
     so gradient accumulation gives exactly the gradient of one big batch (a mean of micro-batch means
     would weight the tokens of short micro-batches more).
[D6] Cross-entropy runs in fp32 whatever the model dtype (fp64 for a float64 model), on the labelled
     positions only (they are gathered first, so the prompt's logits are never copied to fp32).
[D7] Several ranks (torchrun): every rank holds all examples and draws the same step order; rank r
     trains on examples r, r + K, … of each step, the normaliser |C| counts the whole step, and the
     gradients are summed over ranks (grpo.distributed [D1]), so a step's update does not depend on
     the number of ranks. Rank 0 writes metrics.jsonl and final/; a full disk stops the run with one
     line naming the file (grpo.atomic [D3]).
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import torch
import torch.nn.functional as F

from grpo import distributed as dd
from grpo.checkpoint import save_model
from grpo.config import SEED_RANGE, at_least, within
from grpo.models import autocast
from grpo.optim import GuardedStep, OptimSettings
from grpo.run import MetricsWriter, RunDir, progress
from grpo.sharding import full_state_dict, policy_module

IGNORE = -100  # label of positions that never contribute (prompt, padding)


@dataclass
class SFTExample:
    """One tokenised training example: ids and labels of the same length (labels −100 on the prompt)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def num_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def chat_prompt_text(tokenizer, messages: list[dict[str, str]], suffix: str = "") -> str:
    """The prompt exactly as `grpo.rollout.encode_prompts` builds it: template + generation prompt + suffix."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + suffix


def joint_tokenize(tokenizer, prompt: str, completion: str) -> tuple[list[int], int]:
    """Tokenise `prompt + completion` jointly; (ids, s) with ids[s:] the completion's tokens [D1].

    s is the first token whose character span ends after len(prompt): a token straddling the boundary
    belongs to the completion. Used by SFT labels and by SEGA's implicit reward alike. Needs a fast
    tokenizer (character offsets).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("aligning the completion needs token offsets: load a fast tokenizer")
    enc = tokenizer(prompt + completion, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    start = next((j for j, (_, end) in enumerate(enc["offset_mapping"]) if end > len(prompt)), len(ids))
    return ids, start


def encode_example(tokenizer, prompt: str, completion: str, *, max_length: int) -> SFTExample | None:
    """Tokenise `prompt + completion` jointly [D1], append EOS [D2], label only completion tokens.

    Returns None when no completion token fits in `max_length` [D3].
    """
    ids, start = joint_tokenize(tokenizer, prompt, completion)  # [D1]
    is_completion = [j >= start for j in range(len(ids))]
    ids.append(tokenizer.eos_token_id)  # [D2]
    is_completion.append(True)
    ids, is_completion = ids[:max_length], is_completion[:max_length]  # [D3]
    if not any(is_completion):
        return None
    return SFTExample(ids, [i if c else IGNORE for i, c in zip(ids, is_completion)])


def collate(examples: list[SFTExample], *, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch [D4]: input_ids [B, L] long, attention_mask [B, L] bool, labels [B, L] long."""
    L = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), L), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), L), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), L), dtype=torch.bool)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = True
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@dataclass
class SFTStats:
    """What one call of `sft_loss` saw (sums, so micro-batches add up)."""

    nll_sum: float  # Σ −log p over the labelled tokens of this call
    num_tokens: int  # labelled tokens in this call
    num_correct: int  # labelled tokens whose argmax prediction is the label


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, *, num_tokens: int | None = None
             ) -> tuple[torch.Tensor, SFTStats]:
    """L = −(1/num_tokens) Σ_{labels[i,t] ≠ −100} log softmax(logits[i, t−1])[labels[i, t]].

    Args:
        logits: [B, L, V] any float dtype (computed in fp32 [D6]).
        labels: [B, L] long, −100 on prompt and padding positions.
        num_tokens: the normaliser |C| of the whole optimiser step [D5]; default: the labelled tokens here.
    Returns:
        (loss, stats): loss a scalar fp32 tensor (0 when there is no labelled token), stats of this call.
    """
    assert logits.shape[:2] == labels.shape, f"logits {tuple(logits.shape)} vs labels {tuple(labels.shape)}"
    targets = labels[:, 1:]  # [B, L−1] token t, predicted at position t−1
    valid = targets != IGNORE  # [B, L−1] bool
    z = logits[:, :-1][valid]  # [|C|, V] only the labelled positions are gathered [D6]
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    y = targets[valid]  # [|C|]
    nll_sum = F.cross_entropy(z, y, reduction="sum")  # 0 when there is no labelled token
    n_here = int(valid.sum())
    loss = nll_sum / max(num_tokens if num_tokens is not None else n_here, 1)  # [D5]
    with torch.no_grad():
        correct = int((z.argmax(-1) == y).sum())
    return loss, SFTStats(nll_sum=float(nll_sum.detach()), num_tokens=n_here, num_correct=correct)


# ------------------------------------------------------------------------------------- training loop
@dataclass
class SFTLoopSettings(OptimSettings):
    """Optimisation settings of `train_sft` (scripts' settings inherit from it)."""

    epochs: int = 1
    """passes over the training examples (ignored when max_steps > 0)"""
    max_steps: int = 0
    """optimiser steps to run; 0 = as many as `epochs` take"""
    batch_size: int = 4
    """examples per micro-batch (one forward/backward)"""
    grad_accum: int = 4
    """micro-batches per optimiser step: the step sees batch_size × grad_accum examples"""
    # OptimSettings with SFT's defaults (HF Trainer / Unsloth's notebook: weight decay, linear decay, warm-up)
    weight_decay: float = 0.01
    """AdamW decoupled weight decay"""
    lr_scheduler: Literal["constant", "linear", "cosine"] = "linear"
    """learning-rate decay after warm-up (grpo.optim)"""
    warmup_ratio: float = 0.05
    """fraction of the optimiser steps spent warming the learning rate up linearly"""
    seed: int = 3407
    """seed of the data order, LoRA initialisation and dropout"""

    def validate(self) -> None:
        """Ranges, checked before anything loads (grpo.config [D9])."""
        at_least(self, "epochs", 1)
        at_least(self, "max_steps", 0, why="0 = as many as epochs take")
        at_least(self, "batch_size", 1)
        at_least(self, "grad_accum", 1)
        within(self, "seed", *SEED_RANGE)


def step_batches(n: int, *, per_step: int, seed: int) -> Iterator[tuple[int, list[int]]]:
    """Yield (epoch, example indices of one optimiser step): a seeded permutation per epoch, cut into
    `per_step` pieces (the last piece of an epoch may be smaller)."""
    epoch = 0
    while True:
        order = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        for i in range(0, n, per_step):
            yield epoch, order[i:i + per_step]
        epoch += 1


def _logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # [b, L, V]


def train_sft(model, tokenizer, examples: list[SFTExample], *, s: SFTLoopSettings, run: RunDir,
              base_name: str | None = None, bf16: bool | None = None) -> dict[str, Any]:
    """Fine-tune `model` on `examples`, log one metrics line per optimiser step, save `run.final`.

    Collective under torchrun [D7]: every rank calls it with the same examples. `bf16`: autocast of the
    forward (grpo.models [D8]). Returns a summary: steps, first_loss, last_loss, seconds, final.
    """
    assert examples, "train_sft needs at least one example"
    rank, world = dd.rank(), dd.world_size()
    per_step = s.batch_size * s.grad_accum
    total = s.max_steps if s.max_steps > 0 else s.epochs * math.ceil(len(examples) / per_step)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = s.make_optimizer(params, total_steps=total)
    apply_step = GuardedStep(params, optimizer, scheduler, max_grad_norm=s.max_grad_norm,
                             max_skipped=s.max_skipped_steps)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    batches = step_batches(len(examples), per_step=per_step, seed=s.seed)
    model.train()
    policy = policy_module(model)  # the FSDP root under sharding = fsdp2 (grpo.sharding [S1])
    losses: list[float] = []
    t_start = time.perf_counter()
    writer = MetricsWriter(run.metrics_file, truncate_after_step=0) if rank == 0 else contextlib.nullcontext()
    with writer as metrics, progress(range(total), desc="sft", disable=None if rank == 0 else True) as bar:
        for step in bar:  # (a fresh log: a folder holding a run is refused or cleared first, grpo.run_claim)
            # 1. batch: this step's examples (this rank's share [D7]), in micro-batches of `batch_size`
            epoch, idx = next(batches)
            num_tokens = sum(examples[i].num_tokens for i in idx)  # |C| of the whole step [D5] [D7]
            mine = idx[rank::world]
            micro = [[examples[i] for i in mine[j:j + s.batch_size]] for j in range(0, len(mine), s.batch_size)]
            t0 = time.perf_counter()
            # 2. loss and gradients, accumulated over micro-batches
            nll_sum, n_correct, n_seen = 0.0, 0, 0
            for mb in micro:
                batch = {k: v.to(device) for k, v in collate(mb, pad_id=pad_id).items()}
                with autocast(device, bf16):
                    logits = policy(_logits, batch["input_ids"], batch["attention_mask"].long())  # [b, L, V]
                loss, st = sft_loss(logits, batch["labels"], num_tokens=num_tokens)
                loss.backward()
                nll_sum, n_correct, n_seen = nll_sum + st.nll_sum, n_correct + st.num_correct, \
                    n_seen + int(batch["attention_mask"].sum())
            # 3. update: gradient sum over ranks, clip, AdamW step, schedule
            dd.sum_gradients(params)
            nll_sum, n_correct, n_seen = dd.all_reduce_sum(
                torch.tensor([nll_sum, n_correct, n_seen], dtype=torch.float64, device=device)).tolist()
            lr = scheduler.get_last_lr()[0]
            grad_norm, applied = apply_step(loss_finite=math.isfinite(nll_sum))  # skip non-finite (grpo.optim [D1])
            optimizer.zero_grad(set_to_none=True)
            # 4. log
            seconds = time.perf_counter() - t0
            losses.append(nll_sum / max(num_tokens, 1))
            if metrics is None:
                continue
            metrics.log(step + 1, {"loss": losses[-1], "token_accuracy": n_correct / max(num_tokens, 1),
                                   "grad_norm": grad_norm, "skipped_steps": int(not applied), "lr": lr,
                                   "epoch": epoch, "num_tokens": num_tokens, "examples": len(idx), "seconds": seconds,
                                   "tokens_per_second": n_seen / max(seconds, 1e-9)})
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
    # 5. save the final model (adapter or full weights) + tokenizer; the replicas are checked first
    dd.check_replicas(params, what="end of SFT")
    weights = full_state_dict(model)  # collective under fsdp2 (grpo.sharding [S7])
    final = save_model(model, tokenizer, run.final, base_name=base_name, state_dict=weights) if rank == 0 \
        else run.final
    return {"steps": total, "first_loss": losses[0], "last_loss": losses[-1],
            "seconds": time.perf_counter() - t_start, "final": str(final)}

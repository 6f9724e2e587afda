"""One completion per prompt, in batches: the generation step of every evaluation and demo script.

    out = generate_texts(model, tok, prompts, batch_size=8, max_new_tokens=256, greedy=True)
    out.texts, out.lengths, out.truncated          # lists, one entry per prompt, in prompt order
    out = s.generate(model, tok, prompts)          # the same with a script's GenerationSettings

Sampling goes through `grpo.rollout.sample_group` (G = 1), so temperature / top-k / top-p mean exactly
what they mean in training; `greedy=True` takes the argmax with Hugging Face `generate` instead. Neither
applies anything from the checkpoint's generation_config but its token ids (grpo.rollout [D5]): greedy is
the model's own argmax, not the argmax after a shipped repetition penalty.
Completions end at the first EOS (`grpo.rollout.completion_mask`); texts are decoded without special
tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from grpo.config import SEED_RANGE, at_least, require, within
from grpo.data.prompts import resolve_max_prompt_length, truncate_prompts_left
from grpo.policy import causal_lm
from grpo.rollout import (Sampling, completion_mask, encode_prompts, eos_token_ids, only_our_generation_config,
                          sample_group)
from grpo.run import progress


@dataclass
class Generations:
    texts: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # completion tokens, EOS included
    truncated: list[bool] = field(default_factory=list)  # reached max_new_tokens without EOS


@dataclass
class GenerationSettings:
    """How an evaluation or demo script decodes (scripts' settings inherit it, some with other defaults)."""

    batch_size: int = 8
    """prompts generated together"""
    max_new_tokens: int = 256
    """most tokens generated per completion"""
    greedy: bool = True
    """decode greedily; false samples with temperature / top_k / top_p"""
    temperature: float = 1.0
    """sampling temperature (greedy=false)"""
    top_k: int = 0
    """sample among the k most likely tokens; 0 = off (greedy=false)"""
    top_p: float = 1.0
    """nucleus sampling mass; 1 = off (greedy=false)"""
    seed: int = 0
    """sampling seed"""

    def validate(self) -> None:
        """Ranges, checked before anything loads (grpo.config [D9])."""
        at_least(self, "batch_size", 1)
        at_least(self, "max_new_tokens", 1)
        require(self, "temperature", self.greedy or self.temperature > 0,
                "must be > 0 when sampling (greedy = true takes the argmax)")
        at_least(self, "top_k", 0, why="0 = off")
        within(self, "top_p", 0, 1, low_open=True, why="1 = off")
        within(self, "seed", *SEED_RANGE)

    def generate(self, model, tok, prompts: Sequence[Any], *, prompt_suffix: str = "",
                 desc: str = "generate") -> "Generations":
        """`generate_texts` with these settings (and `max_prompt_length` when the script has PromptSettings)."""
        return generate_texts(model, tok, prompts, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                              greedy=self.greedy, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, prompt_suffix=prompt_suffix, desc=desc,
                              max_prompt_length=getattr(self, "max_prompt_length", None))


@torch.no_grad()
def _greedy(model, tok, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int):
    from transformers import GenerationConfig

    eos = eos_token_ids(model, tok)
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                              eos_token_id=eos)
    with only_our_generation_config(model, config):  # the checkpoint's penalties too (grpo.rollout [D5])
        out = model.generate(input_ids=ids, attention_mask=mask.long(), generation_config=config)
    completion_ids = out[:, ids.shape[1]:]  # [B, T]
    cmask, ended = completion_mask(completion_ids, eos_ids=eos)  # [B, T], [B]
    texts = [tok.decode(row[m], skip_special_tokens=True) for row, m in zip(completion_ids, cmask)]
    return texts, cmask.sum(-1), ~ended


def generate_texts(model, tok, prompts: Sequence[Any], *, batch_size: int, max_new_tokens: int,
                   greedy: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   prompt_suffix: str = "", desc: str = "generate", max_prompt_length: int | None = None
                   ) -> Generations:
    """One completion for each prompt (chat messages or raw strings), `batch_size` prompts at a time.

    A prompt longer than `max_prompt_length` (default: the model's positions − max_new_tokens) keeps its
    last tokens, as in training (grpo.data.prompts); evaluation never drops a row, so every accuracy has
    the same denominator.
    """
    assert batch_size >= 1 and max_new_tokens >= 1, "batch_size and max_new_tokens must be >= 1"
    device = next(model.parameters()).device
    limit = resolve_max_prompt_length(max_prompt_length, causal_lm(model).config, max_new_tokens=max_new_tokens)
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    out = Generations()
    with progress(total=len(prompts), desc=desc) as bar:
        for i in range(0, len(prompts), batch_size):
            batch = list(prompts[i:i + batch_size])
            ids, mask = encode_prompts(tok, batch, device=device, generation_suffix=prompt_suffix)  # [B, P]
            ids, mask, _ = truncate_prompts_left(ids, mask, max_prompt_length=limit)  # [B, ≤ P_max]
            if greedy:
                texts, lengths, truncated = _greedy(model, tok, ids, mask, max_new_tokens)
            else:
                r = sample_group(model, tok, ids, mask, G=1, sampling=sampling)
                texts, lengths, truncated = r.completions, r.lengths, r.truncated
            out.texts += texts
            out.lengths += lengths.tolist()
            out.truncated += truncated.tolist()
            bar.update(len(batch))
    return out

"""Prompt length: `max_prompt_length` (TRL's name), its default from the model's positions, and what
happens to a longer prompt, truncated from the left or rejected, counted either way (issue #14 item 8).

Without a limit a 100 KB question reached the model whole (34 s and 1.65 GB for one step of a
1,024-position model) and a 2 MB one never finished: attention grows with the square of the prompt
length, and positions past the model's `max_position_embeddings` were never trained.

    max_prompt_length  P_max, the most prompt tokens the model sees (chat template + generation prompt +
                       prompt_suffix); None = the default [D4]
    prompt_overflow    "truncate_left": keep the last P_max tokens (TRL's GRPOTrainer: `prompt_ids[:,
                       -max_prompt_length:]`); "reject": drop the row before the first step [D3]

Use (the settings name both; the counts are the metric `prompts/truncated` and one note at start):
    P_max = resolve_max_prompt_length(s.max_prompt_length, model.config, max_new_tokens=...)
    fit = fit_rows(rows, prompt_lengths(tok, prompts, suffixes), max_prompt_length=P_max,
                   overflow=s.prompt_overflow)                     # once, when the task is built
    ids, mask, truncated = truncate_prompts_left(ids, mask, max_prompt_length=P_max)   # every batch

Implementation details:
    [D1] Length is counted on the prompt exactly as the sampler encodes it: the chat template with the
         generation prompt, then `prompt_suffix` (`grpo.rollout.encode_prompts`); raw-text prompts as
         they are. No special tokens are added (the template has them).
    [D2] Left truncation keeps the end of the prompt: the generation prompt and priming suffix that the
         completion continues, and the end of the question. The start is lost (system prompt, start of
         the question). On left-padded [B, P] tensors this is `[:, -P_max:]` for every row.
    [D3] Rejection happens once, when the rows are prepared, never mid-run: a batch never shrinks, and
         every rank drops the same rows. Rejecting every row is an error.
    [D4] Default P_max = max_position_embeddings − max_new_tokens, so prompt and completion stay within
         the positions the model was trained on. A config that states no position limit gives None (no
         limit). A limit that leaves no room for a prompt is an error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from grpo.config import UserError

if TYPE_CHECKING:  # tensors are only passed through: reading data needs no torch
    import torch

PROMPT_OVERFLOW = ("truncate_left", "reject")
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
_SHOWN = 10  # row indices listed in a note


def model_positions(config: Any) -> int | None:
    """The number of positions a model config says it was trained on, or None if it names none."""
    config = getattr(config, "text_config", None) or config  # multimodal configs nest the LM's
    for key in _POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def resolve_max_prompt_length(max_prompt_length: int | None, config: Any, *, max_new_tokens: int) -> int | None:
    """`max_prompt_length` if set, else max positions − max_new_tokens [D4]; None when neither is known.

    Raises UserError if the value is < 1 (an explicit 0 or negative, or max_new_tokens ≥ the positions).
    """
    if max_prompt_length is not None:
        if max_prompt_length < 1:
            raise UserError(f"max_prompt_length must be >= 1 (or unset for the model's default), "
                            f"got {max_prompt_length}")
        return max_prompt_length
    positions = model_positions(config)
    if positions is None:
        return None
    if positions - max_new_tokens < 1:  # [D4]
        raise UserError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's {positions} "
                        "positions; lower it, or set max_prompt_length explicitly")
    return positions - max_new_tokens


def prompt_lengths(tokenizer, prompts: Sequence[Any], suffixes: Sequence[str] | None = None) -> list[int]:
    """Token count of each prompt as the sampler encodes it [D1]: chat messages through the chat template
    with the generation prompt, then its suffix (default ""); a str prompt as it is."""
    suffixes = suffixes if suffixes is not None else [""] * len(prompts)
    assert len(suffixes) == len(prompts), f"{len(suffixes)} suffixes for {len(prompts)} prompts"
    texts = [p if isinstance(p, str) else
             tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) + s
             for p, s in zip(prompts, suffixes)]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def truncate_prompts_left(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, max_prompt_length: int | None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the last `max_prompt_length` positions of left-padded prompts [D2].

    Args:
        prompt_ids: [B, P] token ids, left padded.
        prompt_mask: [B, P] bool, True on prompt tokens.
        max_prompt_length: P_max; None = no limit.
    Returns:
        (prompt_ids [B, min(P, P_max)], prompt_mask [B, min(P, P_max)], truncated [B] bool: the row lost tokens)
    """
    assert prompt_ids.shape == prompt_mask.shape and prompt_ids.dim() == 2, \
        f"prompt_ids {tuple(prompt_ids.shape)} and prompt_mask {tuple(prompt_mask.shape)} must both be [B, P]"
    if max_prompt_length is None or prompt_ids.shape[1] <= max_prompt_length:
        return prompt_ids, prompt_mask, prompt_mask.new_zeros(prompt_mask.shape[0])  # [B] all False
    truncated = prompt_mask.sum(-1) > max_prompt_length  # [B]
    return prompt_ids[:, -max_prompt_length:], prompt_mask[:, -max_prompt_length:], truncated  # [B, P_max]


@dataclass
class PromptFit:
    """The rows to train on and the prompts that were longer than `max_prompt_length`."""

    rows: list[dict[str, Any]]  # all rows ("truncate_left") or those that fit ("reject")
    too_long: list[int]  # indices (into the rows given to fit_rows) of prompts longer than P_max
    longest: int  # tokens of the longest prompt (0 for no rows)
    max_prompt_length: int | None
    overflow: str

    def note(self, total: int) -> str:
        """One line for the log ("" when every prompt fits): how many, what was done, which rows."""
        if not self.too_long:
            return ""
        shown = ", ".join(map(str, self.too_long[:_SHOWN])) + (", ..." if len(self.too_long) > _SHOWN else "")
        action = "truncated from the left when sampled" if self.overflow == "truncate_left" else "rejected (dropped)"
        return (f"note: {len(self.too_long)} of {total} prompts are longer than max_prompt_length="
                f"{self.max_prompt_length} tokens (longest {self.longest}): {action}; rows {shown}")


def fit_rows(rows: Sequence[dict[str, Any]], lengths: Sequence[int], *, max_prompt_length: int | None,
             overflow: str) -> PromptFit:
    """Find (and, for "reject", drop) the rows whose prompt is longer than `max_prompt_length` [D3].

    Args:
        rows: the task's rows, in order; lengths: their prompt lengths in tokens (`prompt_lengths`).
        max_prompt_length: P_max; None = no limit (every row fits).
        overflow: "truncate_left" (rows kept; the sampler truncates them) or "reject".
    Raises:
        UserError for an unknown `overflow`, or when "reject" leaves no row.
    """
    if overflow not in PROMPT_OVERFLOW:
        raise UserError(f"prompt_overflow must be one of {', '.join(PROMPT_OVERFLOW)}, got {overflow!r}")
    assert len(lengths) == len(rows), f"{len(lengths)} lengths for {len(rows)} rows"
    limit = max_prompt_length if max_prompt_length is not None else float("inf")
    too_long = [i for i, n in enumerate(lengths) if n > limit]
    kept = list(rows)
    if overflow == "reject" and too_long:  # [D3]
        dropped = set(too_long)
        kept = [r for i, r in enumerate(rows) if i not in dropped]
        if not kept:
            raise UserError(f"every one of the {len(rows)} prompts is longer than max_prompt_length="
                            f"{max_prompt_length} tokens (shortest {min(lengths)}); raise it, or set "
                            "prompt_overflow=truncate_left")
    return PromptFit(rows=kept, too_long=too_long, longest=max(lengths, default=0),
                     max_prompt_length=max_prompt_length, overflow=overflow)


def limit_prompts(rows: list[dict[str, Any]], prompts: Sequence[Any], suffixes: Sequence[str] | None, tokenizer,
                  model_config: Any, *, max_prompt_length: int | None, overflow: str, max_new_tokens: int,
                  print_note: bool = True) -> tuple[int | None, list[dict[str, Any]]]:
    """(P_max, the rows to train on) for a trainer, once before its first step: the limit from the setting or
    the model's positions [D4], the rows whose prompt is longer dropped under "reject" [D3], one note line
    (stderr, when `print_note`, i.e. on rank 0) counting the long ones. `prompts[i]` is row i's prompt as the
    sampler encodes it (messages or text) and `suffixes[i]` its suffix [D1]."""
    import sys

    limit = resolve_max_prompt_length(max_prompt_length, model_config, max_new_tokens=max_new_tokens)
    if limit is None:
        return None, list(rows)
    fit = fit_rows(rows, prompt_lengths(tokenizer, prompts, suffixes), max_prompt_length=limit, overflow=overflow)
    if fit.too_long and print_note:
        print(fit.note(len(rows)), file=sys.stderr)
    return limit, fit.rows


"""Entropy-guided score of a sampled completion (GEM / GenPref-SEGA, arXiv 2511.13007, Eq. 1).

Score, per completion a, from the policy's own next-token distributions at temperature 1 (the *model*
distribution, ALGORITHMS.md §1), over completion tokens only, by default without a final EOS token:

    S(a) = −H_final(a) + λ · mean(top-m of {H_t : t ∈ reasoning span})

    H_t        entropy of softmax(z_t) at completion position t (nats)
    final span the tokens after the last final-answer marker in the decoded text; without a marker,
               the last ⌈f·n⌉ tokens (f = final_frac) or the last w tokens (w = final_window)
    reasoning  every completion token before the final span
    H_final    mean of H_t over the final span
    top-m      m = max(1, ⌊top_m·n_r⌋) highest H_t of the n_r reasoning tokens if top_m < 1, else
               min(top_m, n_r); an empty reasoning span contributes 0

Symbol → code:

    H_t                  entropy                     (N, T) fp32, from grpo.policy.completion_logprobs
    completion tokens    completion_mask             (N, T) bool, a prefix of each row (up to the first EOS)
    n, scored tokens     score_mask                  (N, T) bool, completion_mask less a final EOS [D8]
    final span           final_mask                  (N, T) bool
    reasoning span       reasoning_mask              (N, T) bool
    marker position      final_start                 (N,) long, first final-span token; −1 = no marker
    f, w, top_m, λ       final_frac, final_window, top_m, lambda_fork
    H_final, fork term   EntropyScore.h_final, .fork_entropy   (N,)
    S(a)                 EntropyScore.score          (N,)

Implementation details:

[D1] Markers are searched in the decoded completion text (special tokens kept, no space clean-up, so
     every character belongs to exactly one token) and mapped back to token positions by incremental
     decoding: token j spans characters [c(j), c(j+1)) with c(k) = len(decode(ids[:k])). c is found by
     binary search, as "the decoded prefix covers character e" is monotone in k. The sampled tokens are
     what was scored, so we never re-tokenise the text (which could give different tokens).
[D2] The *last* marker occurrence counts (the largest end character over all markers): a model may
     quote "Final Answer:" while reasoning. The final span starts at the first token carrying any
     character after the marker, so an answer merged with the marker's last character stays in the final
     span, and it runs to the end of the scored tokens (without the EOS token by default [D8]). A marker
     with nothing at all after it (a truncated completion, or "Final Answer:" right before EOS when the
     EOS is left out) counts as not found: the fallback span [D3] is scored, never an empty one.
[D3] Fallback span: n_final = clamp(⌈f·n⌉, 1, n), computed in float64 with a 1e-9 guard against
     representation error (0.28·25 = 7.000000000000001 must give 7, not 8); the official code's
     int(0.8·n) split is the same count. `final_window` w, when set, replaces f: n_final = min(w, n).
[D4] H_final of an empty final span (only for an empty completion) is 0, and so is the fork term of an
     empty reasoning span (n = 1): the score of an empty completion is 0. The caller decides whether
     such a completion is valid (the official code skips it).
[D5] Top-m selection is `kernels.top_m_entropy_mean` (exact top-k over the reasoning span, ties broken
     by the kernel, never a quantile).
[D6] Nothing outside completion_mask is read: entropies there are replaced by 0 before any reduction,
     and `score_completions` replaces ids outside the prompt and completion masks by token 0 before the
     forward pass (causal attention already keeps later tokens out of earlier positions).
[D7] Scores carry no gradient (sg in Eq. 2); entropies come from the fused LM-head kernel, so the
     (N, T, V) logits are never materialised (grpo.policy [D3]).
[D8] The EOS token that ends a completion is left out of both spans by default (`include_eos=False`;
     ALGORITHMS.md §4): its entropy is that of *stopping*, so with "Final Answer:" right before EOS the
     final span would be the EOS alone and H_final would score how sure the model is to stop, not the
     answer; and in the fraction span it would stand in for one answer token. It stays a completion
     token for the loss (it is sampled and trained). `include_eos=True` scores it too (this module's
     behaviour before issue #13). EOS ids are the sampler's (grpo.rollout.eos_token_ids), so the token
     the mask ends on is the one dropped; a completion ended by a stop string or the length limit loses
     nothing.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kernels import top_m_entropy_mean

DEFAULT_MARKERS = ("Final Answer:", "<answer>", "####", "<SOLUTION>")


@dataclass
class EntropyScore:
    """Eq. 1 per completion, all (N,) fp32, plus the spans it was computed on."""
    score: torch.Tensor  # S(a) = −h_final + λ·fork_entropy
    h_final: torch.Tensor  # mean entropy of the final span
    fork_entropy: torch.Tensor  # mean of the top-m entropies of the reasoning span
    final_mask: torch.Tensor  # (N, T) bool
    reasoning_mask: torch.Tensor  # (N, T) bool
    fork_mask: torch.Tensor  # (N, T) bool, the selected top-m tokens


def _first_token_past(tokenizer, ids: list[int], text: str, end: int) -> int:
    """Smallest j such that token j carries a character at index ≥ `end` of `text` = decode(ids) [D1]."""
    def covers(k: int) -> bool:  # decode(ids[:k]) agrees with text up to and including character `end`
        prefix = tokenizer.decode(ids[:k], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return len(prefix) > end and prefix[:end + 1] == text[:end + 1]

    lo, hi = 1, len(ids)  # covers(len(ids)) holds because end < len(text)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if covers(mid) else (mid + 1, hi)
    return lo - 1  # token lo − 1 is the one that crosses `end`


def marker_final_start(tokenizer, completion_ids: torch.Tensor, completion_mask: torch.Tensor, *,
                       markers: Sequence[str] = DEFAULT_MARKERS) -> torch.Tensor:
    """Index of the first final-span token, after the last marker in the decoded text [D1][D2].

    Args: completion_ids (N, T) long; completion_mask (N, T) bool, a prefix of each row.
    Returns: (N,) long, −1 for rows without a marker (or with nothing after it).
    """
    starts = torch.full((completion_ids.shape[0],), -1, dtype=torch.long)
    lengths = completion_mask.sum(-1).tolist()  # (N,)
    for i, (row, n) in enumerate(zip(completion_ids.tolist(), lengths)):
        ids = row[:n]  # completion tokens only  [D6]
        text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        ends = [text.rfind(m) + len(m) for m in markers if m and m in text]
        if ends and max(ends) < len(text):  # [D2] a marker with nothing after it is not a final span
            starts[i] = _first_token_past(tokenizer, ids, text, max(ends))
    return starts.to(completion_ids.device)


def score_mask(completion_ids: torch.Tensor, completion_mask: torch.Tensor, *, eos_ids: Sequence[int],
               include_eos: bool = False) -> torch.Tensor:
    """The tokens Eq. 1 reads: completion_mask without its last token when that token is an EOS [D8].

    Args: completion_ids (N, T) long; completion_mask (N, T) bool, a prefix of each row.
    Returns: (N, T) bool, again a prefix of each row (completion_mask itself when include_eos).
    """
    if include_eos:
        return completion_mask
    n = completion_mask.sum(-1)  # (N,)
    last = completion_ids.gather(1, (n - 1).clamp(min=0)[:, None]).squeeze(1)  # (N,) the last completion token
    eos = torch.tensor(list(eos_ids), dtype=completion_ids.dtype, device=completion_ids.device)
    ends_with_eos = (n > 0) & torch.isin(last, eos)  # (N,)
    pos = torch.arange(completion_mask.shape[1], device=completion_mask.device)  # (T,)
    return pos < (n - ends_with_eos.long())[:, None]  # (N, T)


def span_masks(completion_mask: torch.Tensor, final_start: torch.Tensor | None = None, *,
               final_frac: float = 0.2, final_window: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """final span = [final_start, n) when a marker was found, else the last clamp(⌈f·n⌉, 1, n) tokens
    (or the last min(w, n) with final_window = w) [D3]; reasoning span = [0, start).

    Args: completion_mask (N, T) bool prefix; final_start (N,) long, −1 = no marker (None: no markers).
    Returns: (final_mask, reasoning_mask), each (N, T) bool, disjoint, union = completion_mask.
    """
    assert 0.0 < final_frac <= 1.0, f"final_frac must be in (0, 1], got {final_frac}"
    assert final_window is None or final_window >= 1, f"final_window must be >= 1, got {final_window}"
    n = completion_mask.sum(-1)  # (N,)
    if final_window is not None:
        n_final = n.clamp(max=final_window)  # (N,)  [D3]
    else:
        n_final = torch.ceil(n.double() * final_frac - 1e-9).long()  # (N,)  [D3]
        n_final = torch.minimum(n_final.clamp(min=1), n)  # (N,)
    start = n - n_final  # (N,)
    if final_start is not None:
        start = torch.where(final_start >= 0, final_start, start)  # (N,)  marker wins [D2]
    pos = torch.arange(completion_mask.shape[1], device=completion_mask.device)  # (T,)
    final_mask = completion_mask & (pos >= start[:, None])  # (N, T)
    reasoning_mask = completion_mask & (pos < start[:, None])  # (N, T)
    return final_mask, reasoning_mask


def entropy_score(entropy: torch.Tensor, final_mask: torch.Tensor, reasoning_mask: torch.Tensor, *,
                  lambda_fork: float = 1.0, top_m: float = 0.1) -> EntropyScore:
    """S = −mean_{final}(H) + λ · mean(top-m of H over the reasoning span)  (Eq. 1).

    Args: entropy (N, T) float, anything (even NaN) outside the masks [D6]; final_mask, reasoning_mask
        (N, T) bool. top_m: fraction (< 1) or count (≥ 1) of the reasoning span [D5].
    Returns: EntropyScore with (N,) fp32 fields.
    """
    assert final_mask.dtype == torch.bool and reasoning_mask.dtype == torch.bool, "masks must be bool"
    assert entropy.shape == final_mask.shape == reasoning_mask.shape, "entropy and masks: (N, T)"
    assert top_m > 0, f"top_m must be > 0, got {top_m}"
    entropy = entropy.detach().to(torch.promote_types(entropy.dtype, torch.float32))  # [D7]
    h = torch.where(final_mask, entropy, 0.0)  # (N, T)  [D6]
    h_final = h.sum(-1) / final_mask.sum(-1).clamp(min=1)  # (N,)  [D4]
    h_reasoning = torch.where(reasoning_mask, entropy, 0.0)  # (N, T)  [D6]
    fork_entropy, fork_mask = top_m_entropy_mean(h_reasoning, reasoning_mask, top_m=top_m)  # (N,), (N, T)  [D5]
    score = -h_final + lambda_fork * fork_entropy  # (N,)
    return EntropyScore(score=score, h_final=h_final, fork_entropy=fork_entropy, final_mask=final_mask,
                        reasoning_mask=reasoning_mask, fork_mask=fork_mask)


@torch.no_grad()
def score_completions(model, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                      completion_ids: torch.Tensor, completion_mask: torch.Tensor, *,
                      markers: Sequence[str] = DEFAULT_MARKERS, final_frac: float = 0.2,
                      final_window: int | None = None, top_m: float = 0.1, lambda_fork: float = 1.0,
                      include_eos: bool = False) -> EntropyScore:
    """Eq. 1 for N sampled completions: one forward pass of the policy at T = 1, spans, score.

    Args: prompt_ids/prompt_mask (N, P) left padded; completion_ids/completion_mask (N, T) right padded,
        the mask a prefix of each row (up to and including the first EOS). include_eos: score the final
        EOS token as well [D8].
    Returns: EntropyScore, (N,) fields: reshape to (B, k) for filtering.
    """
    from grpo.policy import completion_logprobs
    from grpo.rollout import eos_token_ids

    assert completion_mask.dtype == torch.bool and prompt_mask.dtype == torch.bool, "masks must be bool"
    n = completion_mask.sum(-1, keepdim=True)  # (N, 1)
    pos = torch.arange(completion_mask.shape[1], device=completion_mask.device)  # (T,)
    assert torch.equal(completion_mask, pos < n), "completion_mask must be a prefix of each row"
    prompt_ids = prompt_ids.masked_fill(~prompt_mask, 0)  # (N, P)  [D6]
    completion_ids = completion_ids.masked_fill(~completion_mask, 0)  # (N, T)  [D6]
    _, entropy = completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                     temperature=1.0)  # (N, T)  model distribution at T = 1  [D7]
    scored = score_mask(completion_ids, completion_mask, eos_ids=eos_token_ids(model, tokenizer),
                        include_eos=include_eos)  # (N, T)  [D8]
    final_start = marker_final_start(tokenizer, completion_ids.cpu(), scored.cpu(), markers=markers)
    final_mask, reasoning_mask = span_masks(scored, final_start.to(scored.device),
                                            final_frac=final_frac, final_window=final_window)
    return entropy_score(entropy, final_mask, reasoning_mask, lambda_fork=lambda_fork, top_m=top_m)

"""The decoding loop of grpo.rollout.sample_group: one model call per new token, written out, no `generate`.

    completion_ids, logp, entropy = decode(model, tok, prompt_ids, prompt_mask, G=4, sampling=s, eos_ids=[2])

Per step, for the N = B·G rows (prompts repeated G times):

    z      = logits of the last position, fp32, / T                        [N, V]
    z̃      = truncate_logits(z, top_k, top_p, min_p)                       [N, V]  (grpo.rollout)
    y      ~ softmax(z̃)      (by inversion [G7]; torch.multinomial on request)    [N]
    lp, H  = token_logprobs_and_entropy(z or z̃, y)   score = model | sampling (grpo.rollout [D3])

[G1] Why not Hugging Face `generate`: per new token it prepares inputs, runs a list of logits processors and
     stopping criteria and updates its bookkeeping in Python around the one model call that is the real
     work, and that call is out of our hands. Here the loop does only what the step needs, and the call is
     ours to shape ([G7], [G8], [G10]): 35.0 against 153.4 ms per decoding step at the benchmark shape 2×4×64
     on 2 threads; 50.9 ms with our loop calling the Hugging Face modules, 74.1 ms with torch.mm for the
     linear layers (scripts/bench_generate.py, docs/bench_generate.md).
[G2] The same samples as `generate` with our logits processor (grpo.rollout [D2]) would draw: the same ops in
     the same order on the same logits (scores in fp32, our temperature and truncation, softmax, one
     torch.multinomial over the whole batch, a finished row's token replaced by the pad token afterwards),
     so with the same torch RNG state the tokens are the same (tests/test_decode.py against `generate`).
[G3] The prompt is encoded once per group: the B prompts but their last token are prefilled into a KV
     cache that is repeated G times along the batch (grpo.rollout [D1]); the first step then runs the last
     prompt token. Only the last position's logits are computed (`logits_to_keep=1`), in the prefill too.
     Models whose cache cannot be repeated prefill all N rows.
[G4] Positions count real tokens (cumsum of the mask − 1, as `generate` does for left padding); the
     attention mask is allocated for P + max_new_tokens columns, each switched on as its token arrives.
[G5] A row is finished after its first EOS, or once its decoded text contains a stop string: the tail of
     each unfinished row (the last len(longest stop string) + 2 tokens) is decoded per step, which sees every
     stop string the text can first contain at that token. The loop ends when every row is finished or
     after max_new_tokens. The masks are then built by grpo.rollout from the ids ([D4]), not from this.
[G6] Static KV cache (default): transformers' StaticCache of P + max_new_tokens positions, allocated once
     and written in place, with an attention mask of that width whose columns are switched on as tokens
     arrive; the DynamicCache instead concatenates every layer's keys and values at every step (60 `cat`s
     of the whole cache per token for a 30-layer model). Attention then spans the full width under the mask
     (masked positions weigh exactly 0), so the samples are the same. Measured: no clear difference from
     the DynamicCache at these sizes (83.2 vs 88.7 ms at 2×4×64, 111.3 vs 107.1 ms at 2×8×256; their
     min–max ranges over the timed calls overlap); kept for completions longer than measured, where the
     concatenation grows. A transformers whose StaticCache cannot take the prefill falls back to the
     DynamicCache.
[G7] The draw (default "inverse_cdf"): one uniform per row against the fp64 cumulative sum of its
     probabilities, instead of torch.multinomial, which draws an exponential for every entry of the [N, V]
     matrix (6 ms a step at N = 8, V = 49,152 here). The sum in two levels, block sums then one block's
     (draw_categorical): softmax and draw 0.35 against 3.1 ms a step with one fp64 cumsum of the whole row
     (a one-off timing). The same distribution, other random numbers: with draw="multinomial" the loop
     draws exactly what `generate` draws [G2].
[G8] [G9] The linear layers of a decoding step (LoRA merged, kernels.few_rows' AVX-512 kernel; the bf16
     sampler): grpo/decode_linears.py, under the same tags.
[G10] The model call of a step, for Llama-family models on the CPU (Sampling.decode_step = "auto", the default):
     grpo/decode_step.py's layer written out (the same equations, one attention kernel per layer), with its own
     KV cache of P + max_new_tokens columns filled from the prompts' prefill (so `static_cache` [G6] concerns
     the modules' path only); other models, or decode_step = "hf", call the model's Hugging Face modules as above.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from grpo.decode_linears import decoding_linears
from grpo.decode_step import decoding_step
from grpo.policy import cache_kwarg, causal_lm
from kernels import token_logprobs_and_entropy

DECODE_STEPS = ("auto", "hf")  # Sampling.decode_step [G10]


def _prefill(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, pos: torch.Tensor, G: int, *,
             max_len: int, static: bool):
    """The KV cache of the prompts but their last token, for the N = B·G rows [G3]: prefilled for the B
    prompts once, then repeated G times; in a StaticCache of max_len positions when `static` [G6]."""
    from transformers import DynamicCache, StaticCache

    lm = causal_lm(model)
    key = cache_kwarg(lm)
    P = prompt_ids.shape[1]
    dynamic = DynamicCache(config=lm.config)
    if P > 1:
        rows = slice(None, -1)
        model(input_ids=prompt_ids[:, rows], attention_mask=prompt_mask[:, rows].long(), position_ids=pos[:, rows],
              **{key: dynamic}, use_cache=True, logits_to_keep=1)
    if not static:
        if G > 1 and P > 1:
            dynamic.batch_repeat_interleave(G)
        return key, dynamic
    cache = StaticCache(config=lm.config, max_cache_len=max_len)
    if P > 1:
        for src, dst in zip(dynamic.layers, cache.layers):  # allocates [N, H, max_len, D], copies the prompt
            dst.update(src.keys.repeat_interleave(G, 0), src.values.repeat_interleave(G, 0))
    return key, cache


def draw_categorical(probs: torch.Tensor, block: int = 256) -> torch.Tensor:
    """y_i ~ Categorical(probs_i) by inversion: y_i = min{v : C_{i,v} > u_i·C_{i,V}}, C = cumsum(probs) in fp64,
    u_i ~ U[0, 1) (fp64, 53 bits) [G7]. Args: probs [N, V] ≥ 0, rows with a positive sum. Returns [N] int64.

    C in two levels (the same C up to fp64 rounding): the fp64 sums of blocks of `block` entries and their
    cumulative sum find the block where C crosses u·C_V, then the cumulative sum inside that block finds the
    entry; one pass over probs instead of an fp64 cumsum of all of it. Exact up to fp64 rounding (a
    probability below ~1e-16 of its row's mass may be drawn at a rounded rate); a zero-probability entry is
    never drawn.
    """
    N, V = probs.shape
    nb = -(-V // block)  # blocks per row
    padded = probs if nb * block == V else F.pad(probs, (0, nb * block - V))  # zeros after V
    blocks = padded.reshape(N, nb, block)  # [N, nb, block]
    ends = blocks.sum(-1, dtype=torch.float64).cumsum(-1)  # [N, nb]: C at each block's last entry
    u = torch.rand(N, 1, dtype=torch.float64, device=probs.device) * ends[:, -1:]  # [N, 1]
    b = torch.searchsorted(ends, u, right=True).clamp(max=nb - 1)  # [N, 1]: the block where C crosses u
    start = torch.where(b > 0, ends.gather(1, (b - 1).clamp(min=0)), 0.0)  # [N, 1]: C before the block (≤ u)
    inside = blocks.gather(1, b[:, :, None].expand(N, 1, block))[:, 0]  # [N, block]
    i = torch.searchsorted(start + inside.cumsum(-1, dtype=torch.float64), u, right=True)  # [N, 1], ≤ block
    # rounding may leave the block's own sum short of u: its last entry of positive probability then
    last = block - 1 - (inside > 0).flip(-1).int().argmax(-1, keepdim=True)  # [N, 1]
    return (b * block + torch.minimum(i, last)).squeeze(1)  # [N]


class _StopStrings:
    """Rows whose decoded text contains a stop string after the newest token [G5]."""

    def __init__(self, tokenizer, stop_strings: Sequence[str]):
        self.tok, self.stops = tokenizer, tuple(stop_strings)
        self.tail = max((len(s) for s in self.stops), default=0) + 2

    def __call__(self, tokens: list[torch.Tensor], unfinished: torch.Tensor) -> torch.Tensor:
        hit = torch.zeros_like(unfinished)
        if not self.stops:
            return hit
        recent = torch.stack(tokens[-self.tail:], 1).tolist()  # [N, ≤ tail]
        for i in unfinished.nonzero().flatten().tolist():
            text = self.tok.decode(recent[i], skip_special_tokens=False)
            hit[i] = any(s in text for s in self.stops)
        return hit


@torch.no_grad()
def decode(model, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, G: int, sampling,
           eos_ids: Sequence[int], static_cache: bool = True, draw: str = "inverse_cdf"
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample G completions of each left-padded prompt [B, P]; returns ids, logp, entropy, each [N, T].

    T ≤ sampling.max_new_tokens (the loop stops when every row is finished [G5]); a finished row holds the
    pad token after its end, and its logp / entropy there are whatever the step computed (the caller masks).
    static_cache: a preallocated KV cache [G6] (else transformers' DynamicCache, concatenated per step);
    draw: "inverse_cdf" [G7] or "multinomial" (torch.multinomial, as `generate` draws [G2]).
    """
    if sampling.decode_step not in DECODE_STEPS:
        raise ValueError(f"decode_step must be one of {', '.join(DECODE_STEPS)}, got {sampling.decode_step!r}")
    with decoding_linears(model, sampling.linear_dtype, sampling.linear_kernel) as rows:  # [G8] [G9]
        return _decode(model, tokenizer, prompt_ids, prompt_mask, G=G, sampling=sampling, eos_ids=eos_ids,
                       static_cache=static_cache, draw=draw, rows=rows)


def _decode(model, tokenizer, prompt_ids, prompt_mask, *, G, sampling, eos_ids, static_cache, draw, rows):
    from grpo.rollout import truncate_logits

    B, P = prompt_ids.shape
    N, L = B * G, sampling.max_new_tokens
    pos = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, P] [G4]
    step = decoding_step(model, rows, N=N, max_len=P + L) if sampling.decode_step == "auto" else None  # [G10]
    try:
        if step is not None:  # the B prompts prefilled by the model; the step repeats them into its own cache
            key, cache = _prefill(model, prompt_ids, prompt_mask, pos, 1, max_len=P + L, static=False)
            step.load_prompt(cache, G)
        else:
            key, cache = _prefill(model, prompt_ids, prompt_mask, pos, G, max_len=P + L, static=static_cache)
    except (AttributeError, TypeError, ValueError, NotImplementedError, KeyError):
        # a cache that cannot be repeated or made static [G3] [G6]: all N rows prefilled, in a DynamicCache,
        # through the Hugging Face modules
        static_cache, step = False, None
        key, cache = _prefill(model, prompt_ids.repeat_interleave(G, 0), prompt_mask.repeat_interleave(G, 0),
                              pos.repeat_interleave(G, 0), 1, max_len=P + L, static=False)
    attention = torch.zeros(N, P + L, dtype=torch.long, device=prompt_ids.device)  # [N, P + L], filled as we go
    attention[:, :P] = prompt_mask.repeat_interleave(G, 0)
    step_ids = prompt_ids[:, -1:].repeat_interleave(G, 0)  # [N, 1] the last prompt token first [G3]
    step_pos = pos[:, -1:].repeat_interleave(G, 0)  # [N, 1]
    eos = torch.tensor(list(eos_ids), device=prompt_ids.device)
    pad = tokenizer.pad_token_id
    stop = _StopStrings(tokenizer, sampling.stop_strings)
    unfinished = torch.ones(N, dtype=torch.bool, device=prompt_ids.device)
    tokens, logps, entropies = [], [], []
    for t in range(L):
        if step is not None:  # [G10]
            z = step(step_ids[:, 0], step_pos[:, 0], P - 1 + t, attention) / sampling.temperature  # [N, V]
        else:
            mask = attention if static_cache else attention[:, :P + t]  # [G6]
            out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, **{key: cache},
                        use_cache=True, logits_to_keep=1)
            z = out.logits[:, -1, :].float() / sampling.temperature  # [N, V]
        z_trunc = truncate_logits(z, top_k=sampling.top_k, top_p=sampling.top_p, min_p=sampling.min_p)
        probs = torch.softmax(z_trunc, dim=-1)
        y = draw_categorical(probs) if draw == "inverse_cdf" else torch.multinomial(probs, 1).squeeze(1)  # [N] [G7]
        lp, h = token_logprobs_and_entropy(z if sampling.score == "model" else z_trunc, y)  # [N], [N]
        y = torch.where(unfinished, y, pad)  # a finished row is padded [G2]
        tokens.append(y)
        logps.append(lp)
        entropies.append(h)
        unfinished = unfinished & ~torch.isin(y, eos) & ~stop(tokens, unfinished)  # [G5]
        if not bool(unfinished.any()):
            break
        attention[:, P + t] = 1  # the token just sampled [G4]
        step_ids, step_pos = y[:, None], step_pos + 1
    return torch.stack(tokens, 1), torch.stack(logps, 1), torch.stack(entropies, 1)  # [N, T] each

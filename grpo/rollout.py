"""Sampling: G completions per prompt, plus per-token log-probs and entropies.

One call, `sample_group`, turns B prompts into N = B·G completions:

    prompt_ids      [N, P]  left padded, the B prompts each repeated G times (rows i·G … i·G+G−1)
    completion_ids  [N, T]  right padded with the pad token
    completion_mask [N, T]  True up to and including the first EOS (or the end of a stop string)
    truncated       [N]     True when a completion reached max_new_tokens without EOS or stop string
    logp, entropy   [N, T]  fp32, of the sampled token / the whole next-token distribution (see [D3])

[D1] The prompt is encoded once per group: we prefill the B prompts (all but their last token) into
     a KV cache and repeat the cache G times along the batch; the decoding then only runs the last prompt
     token and the new ones. Models whose cache cannot be repeated prefill the repeated prompts (same
     samples, G× the prefill work).
[D2] Sampling is ours: by default our own decoding loop (grpo.decode; `loop="decode"`), which applies
     temperature, top-k, top-p and min-p (`truncate_logits`) and draws; with `loop="generate"` Hugging
     Face `generate` runs with do_sample, temperature 1, top-k 0 and top-p 1 (its own warpers off) and our
     logits processor does the same operations in the same order. The two loops draw the same tokens for
     the same RNG state when grpo.decode draws with torch.multinomial (grpo.decode [G2], [G7]).
[D3] Which distribution the recorded log-probs and entropies describe is explicit, `score=`:
     "model"    softmax(z / T), the policy the loss trains (default; what ALGORITHMS.md §1 calls model);
     "sampling" the truncated distribution actually sampled from (−inf outside the top-k/p/min-p set).
     Only the previous step's scores are kept ([B·G, V], one step), never `output_scores`.
[D4] Positions after the end of a completion are padding: the mask ends at the first EOS (inclusive);
     for stop strings, at the token whose text completes the first stop string (found by binary search
     on decoded prefixes, since "prefix contains a stop string" is monotone in the prefix length).
[D5] Nothing is inherited from the checkpoint's `generation_config.json` (our decoding loop reads none of it;
     for `loop="generate"`, and greedy evaluation in grpo.generate): `generate` fills every field we
     leave unset from `model.generation_config`, and many of those fields switch processors on
     (repetition_penalty, no_repeat_ngram_size, bad_words_ids, suppress_tokens, min_new_tokens,
     sequence_bias, forced_eos_token_id, …, some before ours, some after) or change the decoding mode
     (num_beams, prompt_lookup_num_tokens, …). The samples would then come from a penalised distribution
     while the recorded log-probs, the entropies and the loss assume softmax(z / T) (ALGORITHMS.md §1;
     issue #13: a shipped repetition_penalty of 1.05 put the recorded log-probs 0.15 off a forward pass). So
     during `generate` the model's generation_config is swapped for one holding only its token ids
     (bos/eos/pad/decoder-start: they end and pad sequences, they shape no distribution), and the
     checkpoint fields this drops are named once per model on stderr. A penalty, if ever wanted, is
     one of our settings, applied in `_SamplerAndRecorder` where [D3] says which distribution is recorded.
"""
from __future__ import annotations

import contextlib
import sys
import weakref
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch

from grpo import distributed as dd
from grpo.policy import cache_kwarg, causal_lm
from kernels import token_logprobs_and_entropy


@dataclass(frozen=True)
class Sampling:
    """How completions are sampled (a value object passed to `sample_group`)."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # 0 = off
    stop_strings: tuple[str, ...] = ()
    score: Literal["model", "sampling"] = "model"  # [D3]
    linear_dtype: Literal["float32", "bfloat16"] = "float32"  # our loop's linear layers (grpo.decode_linears [G9])
    # their fp32 matmul: kernels.few_rows where it runs, else torch.mm (grpo.decode_linears [G8])
    linear_kernel: Literal["auto", "torch"] = "auto"
    # a decoding step's model call: grpo.decode_step's Llama-family layer where it runs, else the HF modules (grpo.decode [G10])
    decode_step: Literal["auto", "hf"] = "auto"


@dataclass
class Rollout:
    """N = B·G sampled completions and what was recorded while sampling them (shapes in the module doc)."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    truncated: torch.Tensor
    logp: torch.Tensor
    entropy: torch.Tensor
    completions: list[str]
    # who sampled, and so whose logp (grpo.trainer [D12]): "hf" our fp32 loop (the trainer's policy); "hf-bf16" our
    # loop in bf16 (grpo.decode_linears [G9]: its own logp and entropy); "vllm" vLLM's logp, entropy not recorded (zeros)
    # (grpo.vllm_engine [V3]). Anything but "hf" gets the sampler–trainer IS correction.
    sampler: str = "hf"

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)  # [N]


# ------------------------------------------------------------------------------------- truncation
def truncate_logits(z: torch.Tensor, *, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """Set to −inf every entry outside the top-k / nucleus top-p / min-p set of each row of z [R, V].

    top-k keeps the k largest; top-p keeps the smallest prefix of the sorted distribution whose mass
    reaches p (the token crossing p is kept); min-p keeps tokens with p(v) ≥ min_p · max_v p(v).
    The argmax is always kept, so a row never becomes all −inf.
    """
    if top_k and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]  # [R, 1]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)  # [R, V]
        probs = sorted_z.float().softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # [R, V] mass strictly before each token
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        z = z.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))
    if min_p > 0.0:
        probs = z.float().softmax(-1)
        z = z.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), float("-inf"))
    return z


class _SamplerAndRecorder:
    """Logits processor: temperature, truncation [D2], and per-step log-prob/entropy records [D3]."""

    def __init__(self, sampling: Sampling, prompt_len: int):
        self.s = sampling
        self.prompt_len = prompt_len
        self.prev_scored: torch.Tensor | None = None  # [N, V] the previous step's scored logits only
        self.logp: list[torch.Tensor] = []
        self.entropy: list[torch.Tensor] = []

    def _record(self, sampled: torch.Tensor) -> None:
        lp, h = token_logprobs_and_entropy(self.prev_scored, sampled)  # [N], [N]
        self.logp.append(lp)
        self.entropy.append(h)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prev_scored is not None:  # input_ids[:, -1] is the token sampled from prev_scored
            self._record(input_ids[:, -1])
        z = scores.float() / self.s.temperature  # [N, V]
        truncated = truncate_logits(z, top_k=self.s.top_k, top_p=self.s.top_p, min_p=self.s.min_p)
        self.prev_scored = z if self.s.score == "model" else truncated
        return truncated

    def finish(self, completion_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prev_scored is not None and len(self.logp) < completion_ids.shape[1]:
            self._record(completion_ids[:, len(self.logp)])
        self.prev_scored = None
        N, T = completion_ids.shape
        if not self.logp:
            empty = torch.zeros(N, T, device=completion_ids.device)
            return empty, empty.clone()
        return torch.stack(self.logp, 1), torch.stack(self.entropy, 1)  # [N, T]


# ------------------------------------------------------------------------------------- masks
def completion_mask(completion_ids: torch.Tensor, *, eos_ids: Sequence[int], stop_at: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask up to and including the first EOS [D4]; `stop_at` [N] (−1 = none) ends a row earlier.

    Returns (completion_mask [N, T] bool, ended [N] bool: the row ended by EOS or stop string).
    """
    N, T = completion_ids.shape
    is_eos = torch.isin(completion_ids, torch.tensor(list(eos_ids), device=completion_ids.device))  # [N, T]
    pos = torch.arange(T, device=completion_ids.device).expand(N, T)  # [N, T]
    end = torch.where(is_eos.any(-1), is_eos.float().argmax(-1), torch.full((N,), T, device=pos.device))  # [N]
    if stop_at is not None:
        end = torch.where((stop_at >= 0) & (stop_at < end), stop_at, end)
    ended = end < T
    return pos <= end.unsqueeze(-1), ended  # [N, T], [N]


def stop_string_positions(tokenizer, completion_ids: torch.Tensor, stop_strings: Sequence[str]) -> torch.Tensor:
    """Index of the token completing the first stop string in each row, −1 if none [D4]."""
    out = torch.full((completion_ids.shape[0],), -1, dtype=torch.long)
    if not stop_strings:
        return out
    for i, row in enumerate(completion_ids.tolist()):
        def hit(k: int) -> bool:
            text = tokenizer.decode(row[:k], skip_special_tokens=False)
            return any(s in text for s in stop_strings)

        if not hit(len(row)):
            continue
        lo, hi = 1, len(row)  # smallest k with hit(k)
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if hit(mid) else (mid + 1, hi)
        out[i] = lo - 1
    return out


# ------------------------------------------------------------------------------------- sampling
def encode_prompts(tokenizer, prompts: Sequence[Any], *, device: torch.device | str = "cpu",
                   generation_suffix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Chat messages (or raw strings) → left-padded ids [B, P] and bool mask [B, P].

    Message lists go through the chat template with the generation prompt; `generation_suffix` is
    appended after it (e.g. `<start_working_out>` for the GSM8K format, which primes the answer).
    """
    texts = [p if isinstance(p, str) else
             tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) + generation_suffix
             for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    tokenizer.padding_side = side
    return enc["input_ids"].to(device), enc["attention_mask"].to(device).bool()


def eos_token_ids(model, tokenizer) -> list[int]:
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


# ------------------------------------------------------------------------------------- generation_config
KEPT_GENERATION_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")  # [D5]
_noted_models: "weakref.WeakSet[Any]" = weakref.WeakSet()  # models whose ignored fields were printed [D5]


def ignored_generation_fields(checkpoint, config) -> dict[str, Any]:
    """The fields the checkpoint's generation_config sets that `generate(generation_config=config)` will not
    apply once only KEPT_GENERATION_FIELDS are inherited [D5]: those set to something other than the value
    the call uses (config's, else transformers' global default). Off values (None, False, 0) are not listed.
    """
    from transformers import GenerationConfig

    defaults = getattr(GenerationConfig, "_get_default_generation_params", dict)()  # transformers >= 5
    ignored = {}
    for key, value in checkpoint.to_diff_dict().items():
        if key in KEPT_GENERATION_FIELDS or key.startswith("_") or key == "transformers_version":
            continue
        used = getattr(config, key, None)
        used = defaults.get(key) if used is None else used
        if value != used and (value or used):
            ignored[key] = value
    return ignored


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


@contextlib.contextmanager
def only_our_generation_config(model, config):
    """Within the block, `model.generate(generation_config=config)` applies `config` and nothing from the
    checkpoint's generation_config but its token ids; the ignored fields are printed once per model [D5]."""
    from transformers import GenerationConfig

    lm = causal_lm(model)  # the Hugging Face model whose generation_config `generate` merges (PEFT too)
    saved = getattr(lm, "generation_config", None)
    if saved is None:
        yield config
        return
    ignored = ignored_generation_fields(saved, config)
    if ignored and lm not in _noted_models and dd.rank() == 0:  # every rank loads the same checkpoint
        _noted_models.add(lm)
        print("note: ignoring the checkpoint's generation_config " +
              ", ".join(f"{k}={_short(repr(v))}" for k, v in ignored.items()) +
              " (generation applies only our settings: temperature, top_k, top_p, min_p, max_new_tokens, "
              "stop_strings; grpo.rollout [D5])", file=sys.stderr)
    lm.generation_config = GenerationConfig(**{k: getattr(saved, k, None) for k in KEPT_GENERATION_FIELDS})
    try:
        yield config
    finally:
        lm.generation_config = saved


def _generation_config(tokenizer, sampling: Sampling, eos: list[int]):
    """What `generate` is asked for [D2]: sampling with its own warpers off, our token ids, max tokens."""
    from transformers import GenerationConfig

    return GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0,  # [D2]
                            max_new_tokens=sampling.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=eos, stop_strings=list(sampling.stop_strings) or None,
                            use_cache=True)  # the prefilled cache [D1] must be read


def _generate(model, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, G: int, sampling: Sampling,
              config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hugging Face `generate` with our logits processor [D2]: (completion ids, logp, entropy) [N, T]."""
    from transformers import DynamicCache, LogitsProcessorList

    B, P = prompt_ids.shape
    ids = prompt_ids.repeat_interleave(G, 0)  # [N, P]
    mask = prompt_mask.repeat_interleave(G, 0).long()  # [N, P]
    recorder = _SamplerAndRecorder(sampling, P)
    kwargs: dict[str, Any] = dict(generation_config=config, logits_processor=LogitsProcessorList([recorder]))
    if sampling.stop_strings:
        kwargs["tokenizer"] = tokenizer
    if G > 1 and P > 1:  # [D1]
        try:
            cache = DynamicCache(config=model.config)
            key = cache_kwarg(causal_lm(model))  # `cache` in transformers 5.2x (grpo.policy [D6])
            pos = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, P]
            model(input_ids=prompt_ids[:, :-1], attention_mask=prompt_mask[:, :-1].long(),
                  position_ids=pos[:, :-1], **{key: cache}, use_cache=True)
            cache.batch_repeat_interleave(G)
            kwargs[key] = cache
        except (AttributeError, TypeError, ValueError, NotImplementedError):
            kwargs.pop("cache", None)
            kwargs.pop("past_key_values", None)
    out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)  # [N, P + T]
    completion_ids = out[:, P:]  # [N, T]
    logp, entropy = recorder.finish(completion_ids)
    return completion_ids, logp, entropy


@torch.no_grad()
def sample_group(model, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, G: int,
                 sampling: Sampling, generator_seed: int | None = None,
                 loop: Literal["decode", "generate"] = "decode", **decode_options) -> Rollout:
    """Sample G completions for each of the B left-padded prompts [B, P] (see the module docstring).

    loop: "decode", our decoding loop (grpo.decode, the default), or "generate", Hugging Face `generate` with
    our logits processor, kept as the reference and for the benchmark (scripts/bench_generate.py).
    decode_options: grpo.decode.decode's `static_cache` and `draw` (the defaults are the fastest exact ones).
    sampling.linear_dtype = "bfloat16" (loop "decode" only) samples from bf16 linear layers (grpo.decode_linears [G9]):
    the Rollout's sampler is then "hf-bf16", its logp the bf16 sampler's.
    """
    from grpo.decode import decode

    if sampling.linear_dtype != "float32" and loop != "decode":
        raise ValueError(f"linear_dtype={sampling.linear_dtype!r} needs loop='decode' (grpo.decode_linears [G9])")
    eos = eos_token_ids(model, tokenizer)
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    was_training = model.training
    model.eval()
    try:
        with only_our_generation_config(model, _generation_config(tokenizer, sampling, eos)) as config:  # [D5]
            if loop == "decode":
                completion_ids, logp, entropy = decode(model, tokenizer, prompt_ids, prompt_mask, G=G,
                                                       sampling=sampling, eos_ids=eos, **decode_options)  # [N, T]
            elif loop == "generate":
                completion_ids, logp, entropy = _generate(model, tokenizer, prompt_ids, prompt_mask, G=G,
                                                          sampling=sampling, config=config)
            else:
                raise ValueError(f"loop must be 'decode' or 'generate', got {loop!r}")
    finally:
        model.train(was_training)
    stop_at = stop_string_positions(tokenizer, completion_ids.cpu(), sampling.stop_strings).to(completion_ids.device)
    cmask, ended = completion_mask(completion_ids, eos_ids=eos, stop_at=stop_at)
    completion_ids = completion_ids.masked_fill(~cmask, tokenizer.pad_token_id)
    texts = [tokenizer.decode(row[m], skip_special_tokens=True) for row, m in zip(completion_ids, cmask)]
    return Rollout(prompt_ids=prompt_ids.repeat_interleave(G, 0), prompt_mask=prompt_mask.repeat_interleave(G, 0),
                   completion_ids=completion_ids, completion_mask=cmask, truncated=~ended, logp=logp * cmask,
                   entropy=entropy * cmask, completions=texts,
                   sampler="hf" if sampling.linear_dtype == "float32" else "hf-bf16")  # grpo.decode_linears [G9]

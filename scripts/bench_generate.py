"""Benchmark: sampling on the CPU against this machine's hardware floor (issue #17), ours against peers.

Run (the issue's shapes are the default; `--help` lists every setting):
    python scripts/bench_generate.py                          # smollm2-135m + LoRA r16, fp32, 2x4x64 and 2x8x256
    python scripts/bench_generate.py --shapes 2x4x64 --variants ours,hf_generate --repeats 5
    python scripts/bench_generate.py --model tiny-llama --shapes 1x2x8 --repeats 1 --warmup 0 --out ''   # quick check

Steps:
 1. The machine, with the thread count used for sampling: read bandwidth = bytes / median time of
    `x.sum()` over `bandwidth_mb` of fp32, and matmul throughput = 2n³ / median time of an n × n matmul, in
    fp32 and bf16. Measured before and after the variants; the best of the two is the floor's.
 1b. After the variants: the model's linear layers alone on N random rows, as grpo.decode runs them
    (time_linears; fp32 by kernels.few_rows where it runs and by torch.mm, and bf16 as [G9]): what the
    kernel and this BLAS do with these weights at N rows, the part of a
    step no change to the loop can remove. Reported per shape and as x_linears per variant.
 2. Per shape B×G×T (B prompts, G completions each, T new tokens at most), the floor of one decoding step of
    N = B·G rows at the mean context c̄ = P̄ + (T − 1)/2 (P̄: mean real prompt tokens; step t attends P̄ + t):
        bytes  = w·W + w·N·D + 2·L·kv·hd·c̄·N·w        weights once, N embedding rows, K and V of the cache
        FLOPs  = 2·N·W + 4·L·h·hd·c̄·N                  every weight once per row, QKᵀ and AV
        floor_ms = max(bytes / bandwidth, FLOPs / matmul throughput of the weights' dtype)
    W = parameters a step reads in full: all of them (LoRA's A and B too) but an untied input embedding, of
    which only N rows are read; a tied embedding is the LM head and is counted once. w = bytes per parameter,
    D hidden size, L layers, h query heads, kv key/value heads, hd head dim. `floor_ms_bf16` is the same
    with w = 2 and the bf16 throughput (for a bf16 sampler).
 3. Correctness before timing: each variant samples once (seed `seed`) with its log-probs recorded, and
    they are compared with a forward pass over prompt + completion (grpo.policy.completion_logprobs at the
    same temperature); a variant off by more than 1e-4 (fp32) stops the run. A variant of another
    distribution (DIFFERENT_DISTRIBUTION: ours_bf16) is not held to that: its gap to the fp32 forward is
    measured and reported (logp_gap_max, logp_gap_mean), only a NaN stops it. Pairs listed in SAME_TOKENS
    must also sample the same tokens; `same_rows_as_first` (JSON) is the share of rows equal to the first
    variant's.
 4. Timing: fixed work per variant (the same seed every call, so each call samples the same rows); warm-up
    rounds, then `repeats` rounds, one call of every variant per round in ABBA order so that load from
    other processes hits them alike. Median and min–max. A call's decoding steps are the longest completion
    of the batch (the loop runs until every row ends); the prompt's prefill is inside the call's time.
 5. Markdown table; <out>.md, <out>.csv, <out>.json, <out>.png (default docs/bench_generate).

Variants (VARIANTS; adding one is one line, a name → a callable or `ours(**sample_group keywords)`):
    ours           grpo.rollout.sample_group(loop="decode"): our decoding loop, log-probs and entropies recorded
                   (for a Llama-family model, its layers written out: grpo.decode [G10])
    ours_hf_modules ours with Sampling(decode_step="hf"): each step calls the model's Hugging Face modules (the
                   loop before [G10]; with the same linear layers [G8])
    ours_torch_mm  ours with Sampling(linear_kernel="torch"): the decoding steps' fp32 linear layers by torch.mm,
                   not kernels.few_rows' AVX-512 kernel (grpo.decode_linears [G8]; the same when the kernel cannot run)
    ours_bf16      ours with Sampling(linear_dtype="bfloat16") (grpo.decode_linears [G9]): the decoding steps' linear
                   layers from bf16 copies of the weights. A DIFFERENT DISTRIBUTION from the fp32 policy (the
                   trainer corrects for it by importance sampling, ALGORITHMS.md §5): its log-prob gap to the
                   fp32 forward is reported, not checked; x_floor is still against the fp32 floor (floor_ms_bf16
                   is in the floor lines and the JSON)
    ours_generate  sample_group(loop="generate"): Hugging Face generate with our logits processor, recorded
    hf_generate    plain model.generate on the B·G repeated prompts (do_sample, temperature, top_k 0, top_p 1,
                   max_new_tokens, pad and EOS ids), nothing recorded
    trl            TRL's non-vLLM sampling when trl is installed (GRPOTrainer._generate_single_turn, TRL 1.16):
                   TRL's own code runs `trl.trainer.utils.pad` (left-padding the B·G prompt id lists),
                   `trl.models.unwrap_model_for_generation`, `DistributedBackend.summon_full_params` and
                   `generate` with a GenerationConfig holding the fields TRL's __init__ sets (max_new_tokens,
                   do_sample, pad/bos/eos ids, temperature, top_p, top_k, min_p, repetition_penalty,
                   cache_implementation; disable_compile), at GRPOConfig's defaults. Ours, not TRL's: the
                   Accelerator (cpu), its EOS id list (TRL's rule written out), the masking after the first EOS
                   (TRL's rule, by grpo.rollout.completion_mask) and the prompt ids (our encode_prompts;
                   scripts/bench_grpo_step.py checks they equal TRL's tokenisation).
 hf_generate and trl record nothing while timed; for the check they run once more with
 `output_scores=True, return_dict_in_generate=True`, and log_softmax of the scores (the logits after
 generate's processors: what was sampled from) gives their log-probs.
 All variants sample without stop strings (the arithmetic task has none; TRL's generate path takes none),
 from the model as the trainer holds it (LoRA, train mode, no dropout): sample_group switches to eval itself,
 hf_generate and trl call generate on it as it is.

Glossary:
    ms_step, ms_min, ms_max   median, min and max over the timed calls of seconds / decoding steps (ms)
    tokens_s                  median completion tokens generated (masked, EOS included) per second
    x_floor                   ms_step / floor_ms of the shape (step 2)
    linears_ms, x_linears     step 1b: the linear layers alone (fp32 as `ours` runs them; bf16 for ours_bf16,
                              torch.mm for ours_torch_mm: LINEARS_OF), and ms_step / that:
                              how much of a step is the loop around the matmuls
    peak_mb                   the process's RSS high-water mark during that variant's calls (Linux VmHWM
                              reset before each call, after the checks' memory is handed back); it includes the
                              model and what the allocator kept from earlier calls: compare variants by it
    logp_gap_max, _mean       max and mean |recorded log-prob − fp32 forward-pass log-prob| over the completion
                              tokens: ≤ 1e-4 (checked) for every variant but ours_bf16, whose gap is its own
                              distribution's (step 3)
    steps, len                decoding steps per call, mean completion length
    same_rows_as_first        (JSON) share of the checked call's rows equal to the first variant's rows
On a shared CPU, `--threads 1` keeps a second OpenMP thread from waiting on a busy core (see
scripts/bench_grpo_step.py); the final numbers come from an idle machine.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo.config import UserError, above, at_least, cli_main, parse_settings, require  # noqa: E402
from grpo.measure import PeakRSS, cpu_name, package_versions  # noqa: E402
from grpo.models import ModelSettings, load_model_from_settings  # noqa: E402
from grpo.run import markdown_table, write_report  # noqa: E402
from kernels.few_rows import few_rows_unavailable  # noqa: E402

LP_TOL = {torch.float32: 1e-4}  # step 3: max |recorded − forward| log-prob per weights dtype


@dataclass
class BenchSettings(ModelSettings):
    device: str = "cpu"
    """the benchmark measures the CPU (cpu only)"""
    task: str = "arithmetic"
    """task whose first B prompts are sampled from (grpo/tasks.py; the main job's: arithmetic)"""
    shapes: list[str] = field(default_factory=lambda: ["2x4x64", "2x8x256"])
    """B×G×T shapes: B prompts, G completions each, T new tokens at most"""
    variants: list[str] = field(default_factory=list)
    """variants to run (ours, ours_generate, hf_generate, trl); empty = all available"""
    temperature: float = 1.0
    """sampling temperature (top-k, top-p and min-p off, as in the main job)"""
    repeats: int = 3
    """timed rounds (one call of each variant per round)"""
    warmup: int = 1
    """untimed rounds first"""
    threads: int = 0
    """torch threads (0 = torch's default; the count used is reported)"""
    seed: int = 0
    """torch seed set before every call (the same rows each call, and across variants where exact)"""
    bandwidth_mb: int = 512
    """size of the fp32 buffer summed to measure read bandwidth (MB; well above the caches)"""
    matmul_size: int = 2048
    """n of the n × n matmuls measuring fp32 / bf16 throughput"""
    out: str = "docs/bench_generate"
    """output prefix: <out>.md, .csv, .json, .png ('' = print only)"""

    def validate(self) -> None:
        """Ranges, checked before anything loads (grpo.config [D9])."""
        require(self, "device", self.device == "cpu", "must be cpu (the floor is the CPU's)")
        require(self, "dtype", self.dtype in ("float32", "fp32"), "must be float32 (the check's tolerance is fp32's)")
        require(self, "shapes", bool(self.shapes) and all(_parse_shape(x) for x in self.shapes),
                "must be B×G×T shapes of positive ints, e.g. 2x4x64,2x8x256")
        avail = available_variants()
        require(self, "variants", set(self.variants) <= set(avail),
                f"must be a subset of the available variants: {', '.join(avail)} (trl needs `pip install trl`)")
        at_least(self, "repeats", 1)
        at_least(self, "warmup", 0)
        at_least(self, "threads", 0, why="0 = torch's default")
        above(self, "temperature", 0)
        at_least(self, "bandwidth_mb", 1)
        at_least(self, "matmul_size", 1)


def _parse_shape(text: str) -> tuple[int, int, int] | None:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])


# ------------------------------------------------------------------------------------- 1. the machine
def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up: first-touch page faults, kernel selection
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_machine(s: BenchSettings, repeats: int = 5) -> dict[str, float]:
    """Read bandwidth (GB/s) and matmul throughput (GFLOP/s, fp32 and bf16) at the current thread count."""
    x = torch.ones(s.bandwidth_mb * 2**20 // 4)
    bandwidth = x.numel() * 4 / _median_seconds(x.sum, repeats) / 1e9
    del x
    n, out = s.matmul_size, {"bandwidth_GBps": bandwidth}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        out[f"gflops_{name}"] = 2 * n**3 / _median_seconds(lambda: a @ b, repeats) / 1e9
    return out


def time_linears(model, *, N: int, dtype: str, kernel: str = "auto", repeats: int = 5) -> float:
    """ms for one decoding step's linear layers alone, as grpo.decode runs them (grpo.decode_linears [G8],
    [G9] for "bfloat16"; kernel "auto": kernels.few_rows where it runs, "torch": torch.mm, as
    Sampling.linear_kernel):
    every linear layer of the model (LM head and LoRA layers, merged, included) once on N random rows
    [N, 1, in], back to back. What this machine's BLAS makes of the weights at N rows: the part of a step
    no change to the loop around the model can remove."""
    from grpo.decode_linears import decoding_linear_layers, decoding_linears

    layers = decoding_linear_layers(model)  # (module, is_lora)
    xs = [torch.randn(N, 1, (m.get_base_layer() if is_lora else m).in_features) for m, is_lora in layers]
    with torch.no_grad(), decoding_linears(model, dtype, kernel):
        return 1e3 * _median_seconds(lambda: [m(x) for (m, _), x in zip(layers, xs)], repeats)


# ------------------------------------------------------------------------------------- 2. the floor
def model_dims(model) -> dict[str, Any]:
    """What one decoding step reads and computes: W (step 2), sizes of the attention, bytes per parameter."""
    from grpo.policy import causal_lm

    lm = causal_lm(model)
    c = lm.config
    emb, head = lm.get_input_embeddings().weight, lm.get_output_embeddings().weight
    tied = emb.data_ptr() == head.data_ptr()
    total = sum(p.numel() for p in model.parameters())  # a tied weight once
    heads = c.num_attention_heads
    return {"params": total, "weights_read": total - (0 if tied else emb.numel()), "tied_embedding": tied,
            "hidden": c.hidden_size, "layers": c.num_hidden_layers, "heads": heads,
            "kv_heads": getattr(c, "num_key_value_heads", None) or heads,
            "head_dim": getattr(c, "head_dim", None) or c.hidden_size // heads,
            "bytes_per_param": next(model.parameters()).element_size()}


def step_floor(dims: dict, machine: dict, *, N: int, context: float) -> dict[str, float]:
    """Bytes, FLOPs and floor_ms of one decoding step of N rows at context `context` (step 2's formula)."""
    L, hd = dims["layers"], dims["head_dim"]
    flops = 2 * N * dims["weights_read"] + 4 * L * dims["heads"] * hd * context * N
    out = {"flops": flops}
    for suffix, w, gflops in (("", dims["bytes_per_param"], machine["gflops_fp32"]),  # fp32 weights (validate)
                              ("_bf16", 2, machine["gflops_bf16"])):
        weights = w * dims["weights_read"] + w * N * dims["hidden"]
        kv = 2 * L * dims["kv_heads"] * hd * context * N * w
        ms_bytes, ms_flops = 1e3 * (weights + kv) / (machine["bandwidth_GBps"] * 1e9), 1e3 * flops / (gflops * 1e9)
        out.update({f"bytes{suffix}": weights + kv, f"bytes_kv{suffix}": kv, f"ms_memory{suffix}": ms_bytes,
                    f"ms_compute{suffix}": ms_flops, f"floor_ms{suffix}": max(ms_bytes, ms_flops),
                    f"bound{suffix}": "memory" if ms_bytes >= ms_flops else "compute"})
    return out


# ------------------------------------------------------------------------------------- variants
@dataclass
class Sample:
    """One call's completions [N, T] (right padded, mask up to and including EOS) and, if recorded, logp."""

    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    logp: torch.Tensor | None


def ours(linear_dtype: str = "float32", linear_kernel: str = "auto", decode_step: str = "auto",
         **sample_group_kwargs) -> Callable[..., Sample]:
    """A variant of grpo.rollout.sample_group: these keywords (loop=..., or any later option) on every call,
    and Sampling.linear_dtype / linear_kernel / decode_step = `linear_dtype` / `linear_kernel` / `decode_step`
    (grpo.decode_linears [G9] / [G8], grpo.decode [G10])."""
    def call(model, tok, prompt_ids, prompt_mask, *, G, sampling, seed, record) -> Sample:
        from dataclasses import replace

        from grpo.rollout import sample_group

        sampling = replace(sampling, linear_dtype=linear_dtype, linear_kernel=linear_kernel, decode_step=decode_step)
        r = sample_group(model, tok, prompt_ids, prompt_mask, G=G, sampling=sampling, generator_seed=seed,
                         **sample_group_kwargs)
        return Sample(r.completion_ids, r.completion_mask, r.logp)

    return call


def _finish(model, tok, out, P: int, record: bool) -> Sample:
    """generate's output → Sample; with `record`, logp = log_softmax(processed scores) at the sampled ids."""
    from grpo.rollout import completion_mask, eos_token_ids

    ids = (out.sequences if record else out)[:, P:]  # [N, T]
    mask, _ = completion_mask(ids, eos_ids=eos_token_ids(model, tok))  # [N, T]
    logp = None
    if record:  # one step at a time: out.scores is T tensors [N, V]
        logp = torch.stack([s.float().log_softmax(-1).gather(-1, ids[:, t, None]).squeeze(-1)
                            for t, s in enumerate(out.scores)], 1) * mask  # [N, T]
    return Sample(ids, mask, logp)


def hf_generate(model, tok, prompt_ids, prompt_mask, *, G, sampling, seed, record) -> Sample:
    """Plain `model.generate` on the B·G repeated prompts."""
    from grpo.rollout import eos_token_ids

    torch.manual_seed(seed)
    ids, mask = prompt_ids.repeat_interleave(G, 0), prompt_mask.repeat_interleave(G, 0).long()  # [N, P]
    extra = dict(output_scores=True, return_dict_in_generate=True) if record else {}
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=sampling.temperature,
                         top_k=0, top_p=1.0, max_new_tokens=sampling.max_new_tokens, pad_token_id=tok.pad_token_id,
                         eos_token_id=eos_token_ids(model, tok), **extra)
    return _finish(model, tok, out, ids.shape[1], record)


_ACCELERATOR: list = []  # one Accelerator per process, made on first use


def trl_generate(model, tok, prompt_ids, prompt_mask, *, G, sampling, seed, record) -> Sample:
    """TRL 1.16's non-vLLM sampling (GRPOTrainer.__init__'s GenerationConfig, _generate_single_turn's call)."""
    from accelerate import Accelerator
    from transformers import GenerationConfig
    from trl.distributed import DistributedBackend
    from trl.models import unwrap_model_for_generation
    from trl.trainer.grpo_config import GRPOConfig
    from trl.trainer.utils import pad

    if not _ACCELERATOR:
        _ACCELERATOR.append(Accelerator(cpu=True))
    acc, defaults = _ACCELERATOR[0], GRPOConfig.__dataclass_fields__
    gen_eos = model.generation_config.eos_token_id  # TRL's rule: the tokenizer's EOS first, then the model's
    gen_eos = [] if gen_eos is None else [gen_eos] if isinstance(gen_eos, int) else list(gen_eos)
    eos = gen_eos if tok.eos_token_id in gen_eos else [tok.eos_token_id, *gen_eos]
    generation_kwargs = {"max_new_tokens": sampling.max_new_tokens, "do_sample": True, "pad_token_id": tok.pad_token_id,
                         "bos_token_id": tok.bos_token_id, "eos_token_id": eos, "temperature": sampling.temperature,
                         **{k: defaults[k].default for k in ("top_p", "top_k", "min_p", "repetition_penalty",
                                                             "cache_implementation")}}  # GRPOConfig's defaults
    record_kwargs = dict(output_scores=True, return_dict_in_generate=True) if record else {}  # the check only
    config = GenerationConfig(**generation_kwargs, disable_compile=True, **record_kwargs)
    torch.manual_seed(seed)
    rows = [ids[m] for ids, m in zip(prompt_ids, prompt_mask) for _ in range(G)]  # TRL repeats each prompt G times
    inputs = {"input_ids": pad(rows, padding_value=tok.pad_token_id, padding_side="left"),
              "attention_mask": pad([torch.ones_like(r) for r in rows], padding_value=0, padding_side="left")}
    with (unwrap_model_for_generation(model, acc, generation_kwargs=generation_kwargs) as unwrapped,
          torch.no_grad(), DistributedBackend(acc).summon_full_params(model, recurse=False)):
        out = unwrapped.generate(**inputs, generation_config=config)
    return _finish(model, tok, out, inputs["input_ids"].shape[1], record)


# name → callable(model, tok, prompt_ids [B, P], prompt_mask [B, P], *, G, sampling, seed, record) → Sample, where
# `record` asks for logp (step 3; `ours` always records, as sample_group does). A new sample_group option is one
# line here.
VARIANTS: dict[str, Callable[..., Sample]] = {
    # the written-out Llama step [G10], inverse-CDF draw, merged LoRA, kernels.few_rows (grpo.decode)
    "ours": ours(loop="decode"),
    "ours_hf_modules": ours(loop="decode", decode_step="hf"),  # [G10]: the model's HF modules at every step
    "ours_torch_mm": ours(loop="decode", linear_kernel="torch"),  # [G8]: torch.mm for the linears, not the kernel
    "ours_multinomial": ours(loop="decode", draw="multinomial"),  # [G7]: generate's draw
    "ours_dynamic_cache": ours(loop="decode", decode_step="hf", static_cache=False),  # [G6]: HF's DynamicCache
    "ours_generate": ours(loop="generate"),  # HF generate + our logits processor (the previous default)
    "ours_bf16": ours(loop="decode", linear_dtype="bfloat16"),  # [G9]: bf16 linears, ANOTHER DISTRIBUTION (step 3)
    "hf_generate": hf_generate,
    "trl": trl_generate,
}
NEEDS = {"trl": "trl"}  # variant → package it needs installed
LINEARS_OF = {"ours_bf16": "ms_linears_bf16", "ours_torch_mm": "ms_linears_torch"}  # step 1b's time per variant
DIFFERENT_DISTRIBUTION = {"ours_bf16"}  # not the fp32 policy's samples: the log-prob gap is reported, not checked
# Pairs of variants that must draw the same tokens from the same seed (step 3). Since grpo.decode [G7] draws by
# inverse CDF, `ours` uses other random numbers than generate; a variant with draw="multinomial" pairs with
# ours_generate (grpo.decode [G2]) once sample_group takes that keyword.
SAME_TOKENS: list[tuple[str, str]] = []


def available_variants() -> list[str]:
    return [n for n in VARIANTS if n not in NEEDS or importlib.util.find_spec(NEEDS[n]) is not None]


# ------------------------------------------------------------------------------------- 3. the check
def check_distribution(name: str, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, *,
                       tol: float) -> float:
    """max |logp − ref_logp| over the completion tokens [N, T]; a UserError naming the variant above `tol`."""
    err = float((logp.double() - ref_logp.double()).abs()[mask].max()) if bool(mask.any()) else 0.0
    if not err <= tol:  # NaN fails too
        raise UserError(f"variant {name} does not sample from the policy's distribution: its log-probs differ from "
                        f"a forward pass by up to {err:.3g} (> {tol:g}); not timed")
    return err


def check_same_tokens(samples: dict[str, Sample], pairs: list[tuple[str, str]] | None = None) -> None:
    """Each pair of SAME_TOKENS present in `samples` sampled identical completion ids, else a UserError."""
    for a, b in SAME_TOKENS if pairs is None else pairs:
        if a in samples and b in samples:
            x, y = samples[a].completion_ids, samples[b].completion_ids
            if x.shape != y.shape or not torch.equal(x, y):
                raise UserError(f"variants {a} and {b} sampled different tokens from the same seed; they must "
                                "draw the same ones (SAME_TOKENS)")


def checked_sample(name, model, tok, prompt_ids, prompt_mask, *, G, sampling, seed
                   ) -> tuple[Sample, float, float]:
    """Step 3: one recorded call of a variant and its (max, mean) |logp gap| to grpo.policy.completion_logprobs;
    checked against LP_TOL unless the variant samples another distribution (DIFFERENT_DISTRIBUTION)."""
    from grpo.policy import completion_logprobs

    sample = VARIANTS[name](model, tok, prompt_ids, prompt_mask, G=G, sampling=sampling, seed=seed, record=True)
    with torch.no_grad():
        ref, _ = completion_logprobs(model, prompt_ids.repeat_interleave(G, 0), prompt_mask.repeat_interleave(G, 0),
                                     sample.completion_ids, sample.completion_mask,
                                     temperature=sampling.temperature)  # [N, T]
    dtype, mask = next(model.parameters()).dtype, sample.completion_mask
    tol = math.inf if name in DIFFERENT_DISTRIBUTION else LP_TOL[dtype]  # inf: only a NaN stops it
    gap_max = check_distribution(name, sample.logp, ref, mask, tol=tol)
    gap_mean = float((sample.logp.double() - ref.double()).abs()[mask].mean()) if bool(mask.any()) else 0.0
    return sample, gap_max, gap_mean


# ------------------------------------------------------------------------------------- 4. timing
PEAK = PeakRSS()


def _return_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc malloc_trim), so RSS counts live memory only."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS keeps what the allocator holds
        pass


def run_shape(s: BenchSettings, model, tok, task, shape: str, names: list[str]) -> tuple[list[dict], dict]:
    """Check, then time every variant at one B×G×T shape: (one result row per variant, shape facts)."""
    from grpo.rollout import Sampling, encode_prompts

    B, G, T = _parse_shape(shape)
    if len(task.rows) < B:
        raise UserError(f"task {s.task} has {len(task.rows)} prompts, fewer than B = {B}")
    rows = task.rows[:B]
    prompt_ids, prompt_mask = encode_prompts(tok, [r["prompt"] for r in rows],
                                             generation_suffix=rows[0].get("prompt_suffix", ""))  # [B, P]
    sampling = Sampling(max_new_tokens=T, temperature=s.temperature)
    checked = {n: checked_sample(n, model, tok, prompt_ids, prompt_mask, G=G, sampling=sampling, seed=s.seed)
               for n in names}
    check_same_tokens({n: c[0] for n, c in checked.items()})
    _return_freed_memory()  # the checks' T × [N, V] scores must not raise the timed calls' RSS
    first = checked[names[0]][0].completion_ids
    calls: dict[str, list[dict]] = {n: [] for n in names}
    for round_ in range(s.warmup + s.repeats):
        for n in (names if round_ % 2 == 0 else names[::-1]):  # ABBA
            PEAK.start()
            t0 = time.perf_counter()
            out = VARIANTS[n](model, tok, prompt_ids, prompt_mask, G=G, sampling=sampling, seed=s.seed, record=False)
            seconds = time.perf_counter() - t0
            lengths = out.completion_mask.sum(-1)  # [N]
            if round_ >= s.warmup:
                calls[n].append({"seconds": seconds, "steps": int(lengths.max()), "tokens": int(lengths.sum()),
                                 "peak_mb": PEAK.read(), "len": float(lengths.float().mean())})
        print(f"{shape} round {round_ + 1}/{s.warmup + s.repeats}" + (" (warm-up)" if round_ < s.warmup else "")
              + ", load " + f"{os.getloadavg()[0]:.2f}", file=sys.stderr)
    results = []
    for n in names:
        cs = calls[n]
        ms = [1e3 * c["seconds"] / c["steps"] for c in cs]
        ids = checked[n][0].completion_ids
        same = float((ids == first).all(-1).float().mean()) if ids.shape == first.shape else 0.0
        results.append({"variant": n, "shape": shape, "steps": statistics.median(c["steps"] for c in cs),
                        "ms_step": statistics.median(ms), "ms_min": min(ms), "ms_max": max(ms),
                        "tokens_s": statistics.median(c["tokens"] / c["seconds"] for c in cs),
                        "peak_mb": max(c["peak_mb"] for c in cs), "logp_gap_max": checked[n][1],
                        "logp_gap_mean": checked[n][2],
                        "len": statistics.mean(c["len"] for c in cs), "same_rows_as_first": same, "calls": cs})
    prompt_len = float(prompt_mask.sum(-1).float().mean())
    return results, {"B": B, "G": G, "T": T, "N": B * G, "prompt_len_mean": prompt_len,
                     "context_mean": prompt_len + (T - 1) / 2}


COLUMNS = [("variant", "{}"), ("shape", "{}"), ("steps", "{:.0f}"), ("ms_step", "{:.1f}"), ("ms_min", "{:.1f}"),
           ("ms_max", "{:.1f}"), ("tokens_s", "{:.1f}"), ("floor_ms", "{:.2f}"), ("x_floor", "{:.2f}"),
           ("linears_ms", "{:.2f}"), ("x_linears", "{:.2f}"),
           ("peak_mb", "{:.0f}"), ("logp_gap_max", "{:.1e}"), ("logp_gap_mean", "{:.1e}"), ("len", "{:.1f}")]


def plot(results: list[dict], floors: dict, path: str, title: str) -> None:
    """ms per decoding step per variant, grouped by shape, min–max as error bars; the floor as a black line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grpo.atomic import atomic_path

    shapes, names = list(floors), list(dict.fromkeys(r["variant"] for r in results))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(shapes) + 2), 4), dpi=110)
    for i, n in enumerate(names):
        rs = [next(r for r in results if r["variant"] == n and r["shape"] == sh) for sh in shapes]
        ax.bar([j + i * width for j in range(len(shapes))], [r["ms_step"] for r in rs], width, label=n,
               yerr=[[r["ms_step"] - r["ms_min"] for r in rs], [r["ms_max"] - r["ms_step"] for r in rs]], capsize=2)
    for j, sh in enumerate(shapes):
        ax.hlines(floors[sh]["floor_ms"], j - width / 2, j + 0.8 - width / 2, colors="k",
                  label="floor" if j == 0 else None)
        ax.annotate(f"floor {floors[sh]['floor_ms']:.2f} ms", (j - width / 2, floors[sh]["floor_ms"]),
                    xytext=(0, 2), textcoords="offset points", fontsize=7)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes)
    ax.set_xlabel("B×G×T")
    ax.set_ylabel("ms per decoding step (median)")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def main() -> None:
    s = parse_settings(BenchSettings, description=__doc__)
    command = "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:])
    if s.threads:
        torch.set_num_threads(s.threads)
    names = s.variants or available_variants()
    from grpo.tasks import load_task

    load_before = os.getloadavg()
    before = measure_machine(s)  # 1.
    print("machine before: " + json.dumps(before), file=sys.stderr)
    task = load_task(s.task, limit=max(_parse_shape(x)[0] for x in s.shapes))
    model, tok = load_model_from_settings(s)
    dims = model_dims(model)
    results, shapes = [], {}
    for shape in s.shapes:
        rs, shapes[shape] = run_shape(s, model, tok, task, shape, names)  # 3. and 4.
        results += rs
    after = measure_machine(s)
    machine = {k: max(before[k], after[k]) for k in before}  # the best seen: the lowest floor
    floors = {sh: {**f, **step_floor(dims, machine, N=f["N"], context=f["context_mean"])} for sh, f in shapes.items()}
    for f in floors.values():  # 1b. the linear layers alone, as the loop runs them
        f["ms_linears"] = time_linears(model, N=f["N"], dtype="float32")
        f["ms_linears_torch"] = time_linears(model, N=f["N"], dtype="float32", kernel="torch")
        f["ms_linears_bf16"] = time_linears(model, N=f["N"], dtype="bfloat16")
    for r in results:  # 2.
        r["floor_ms"] = floors[r["shape"]]["floor_ms"]
        r["x_floor"] = r["ms_step"] / r["floor_ms"]
        r["linears_ms"] = floors[r["shape"]][LINEARS_OF.get(r["variant"], "ms_linears")]
        r["x_linears"] = r["ms_step"] / r["linears_ms"]
    machine_info = {"cpu_name": cpu_name(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(), **machine,
                    "before": before, "after": after, "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    title = (f"Sampling, {s.model} (LoRA r{s.lora_r if s.use_lora else '-'}), fp32, threads {machine_info['threads']} "
             f"on {machine_info['cpu_name']}: {machine['bandwidth_GBps']:.1f} GB/s read, "
             f"{machine['gflops_fp32']:.0f} / {machine['gflops_bf16']:.0f} GFLOP/s fp32 / bf16; "
             f"timed rounds {s.repeats} after warm-up {s.warmup}; load avg before/after "
             f"{load_before[0]:.2f}/{machine_info['loadavg_after'][0]:.2f}\n\n`{command}`")
    why = few_rows_unavailable()
    kernel_note = "kernels.few_rows" if why is None else f"torch.mm: kernels.few_rows unavailable, {why}"
    machine_info["few_rows_kernel"] = why or "used"
    floor_lines = [f"floor {sh}: {f['bytes'] / 1e6:.1f} MB and {f['flops'] / 1e9:.2f} GFLOP per step at "
                   f"c̄ = {f['context_mean']:.0f} → {f['floor_ms']:.2f} ms ({f['bound']} bound); bf16 weights "
                   f"{f['floor_ms_bf16']:.2f} ms; the linear layers alone at N = {f['N']} rows as the loop runs "
                   f"them: {f['ms_linears']:.2f} ms fp32 ({f['ms_linears'] / f['floor_ms']:.2f}× the floor; "
                   f"{kernel_note}), {f['ms_linears_torch']:.2f} ms fp32 by torch.mm "
                   f"({f['ms_linears_torch'] / f['floor_ms']:.2f}×), {f['ms_linears_bf16']:.2f} ms bf16"
                   for sh, f in floors.items()]
    notes = [f"{n}: ANOTHER DISTRIBUTION than the fp32 policy (bf16 linear layers, grpo.decode_linears [G9]); "
             "its logp_gap is its measured distance to the policy, not checked" for n in names if n in DIFFERENT_DISTRIBUTION]
    text = markdown_table(title, results, COLUMNS) + "\n" + "\n".join(floor_lines + notes) + "\n"
    print(text)
    if s.out:
        Path(s.out).parent.mkdir(parents=True, exist_ok=True)
        versions = package_versions()
        write_report(s.out, text=text, rows=results, columns=[c for c, _ in COLUMNS],
                     csv_extra={"versions": json.dumps(versions), "command": command},
                     payload={"command": command, "versions": versions, "settings": asdict(s),
                              "machine": machine_info, "model": dims, "floors": floors, "results": results})
        plot(results, floors, str(Path(s.out).with_suffix(".png")),
             f"sampling, {s.model}{' + LoRA r' + str(s.lora_r) if s.use_lora else ''}, fp32, "
             f"threads {machine_info['threads']}, {machine_info['cpu_name']}\n"
             f"{machine['bandwidth_GBps']:.1f} GB/s read, "
             f"{machine['gflops_fp32']:.0f} / {machine['gflops_bf16']:.0f} GFLOP/s fp32 / bf16, "
             f"load {load_before[0]:.1f}/{machine_info['loadavg_after'][0]:.1f}")
        print(f"wrote {s.out}.md, .csv, .json, .png", file=sys.stderr)


if __name__ == "__main__":
    cli_main(main)

"""vLLM as the sampler of a GRPO run (`--use-vllm`): the same `Rollout` as grpo.rollout.sample_group, faster.

    engine = VLLMEngine.start(s, model_path)        # once; engine.start_seconds says how long it took
    engine.sync(model)                              # after every optimiser step: the trainer's weights → vLLM
    rollout = engine.sample(tok, prompt_ids, prompt_mask, G=4, sampling=Sampling(...), seed=123)

The Hugging Face path (grpo.rollout) stays the default and the readable reference; this module only replaces
*how* completions are drawn. What the trainer does with them is the same, plus the sampler–trainer
correction (ALGORITHMS.md §5, grpo.correction), because vLLM's numbers are not the trainer's.

[V1] Colocated, in the training process (TRL's `vllm_mode=colocate`): VLLM_ENABLE_V1_MULTIPROCESSING=0 keeps
     vLLM's engine core in this process, so a weight sync hands vLLM the trainer's tensors without copying
     them through a pipe. vLLM's own log lines are held at WARNING (VLLM_LOGGING_LEVEL overrides).
[V2] Nothing comes from the checkpoint's generation_config (`generation_config="vllm"`), as in the HF path
     (grpo.rollout [D5]): temperature, top-k, top-p, min-p, stop strings and max tokens are ours alone; EOS
     is every id grpo.rollout.eos_token_ids names, passed as stop token ids.
[V3] Recorded log-probs are vLLM's `processed_logprobs`: log-softmax of the logits after temperature,
     min-p, top-k and top-p — the distribution the token was actually drawn from (TRL's choice). With no
     truncation that is softmax(z / T), what the trainer's forward computes (grpo.rollout [D3] "model"); with
     top-k/p it is the truncated sampler, and the IS weight then also corrects the truncation. vLLM gives no
     entropies: the trainer takes them from its own no-grad forward (grpo.trainer [D12]).
[V4] Masks are built from the token ids exactly as grpo.rollout builds them (first EOS inclusive, the token
     completing the first stop string [D4]); `truncated` = the row ended by neither. vLLM is asked to stop
     on the same strings so it does not sample past them. A row vLLM ended on a stop string that our
     decoded-prefix search does not see (a detokenizer difference) ends at its last token and counts as
     ended, not truncated.
[V5] Weight sync: the trainer's weights in the checkpoint's names (`checkpoint_weights`) go through the
     worker's `reload_weights` (vLLM's `load_weights` on a started CPU model fails: its CPU backend repacks
     the weights once loaded; reload_weights re-runs that repacking). A LoRA adapter is merged
     functionally, W + ΔW from PEFT's `get_delta_weight`, without touching the trainer's weights (TRL merges
     in place and unmerges, which leaves W + Δ − Δ ≠ W rounding behind every step). The whole model is
     pushed each time (a partial push would leave vLLM's fused qkv / gate-up layers half loaded); the prefix
     cache is reset after every sync, since its KV entries were computed with the old weights.
[V6] Seeds: vLLM's per-request seed is drawn by the trainer from torch's generator (checkpointed, so
     `--resume` replays the same samples); prompt b of a call gets seed + b and vLLM derives its G samples'
     streams from it. Starting the engine seeds Python, NumPy and torch inside vLLM: their states are saved
     before and restored after, so the rank's own seed still drives everything else.
[V7] Sleep mode (`vllm_enable_sleep_mode`, CUDA only: the CPU build ignores sleep): after sampling the engine
     sleeps at level 2 (KV cache and weights freed), and wakes its weights before the next sync and its KV
     cache after it, as TRL does. Not yet run on a GPU (README, "GPU").
[V8] Under torchrun every rank starts its own engine (tensor parallel size 1) inside the job's process group
     and samples its own share of the prompts with its own seeds; the ranks' weights are equal (rank 0's
     broadcast, the summed gradients), so every engine holds the same policy. vLLM's shutdown destroys
     torch.distributed's default group: `close` runs after grpo.distributed.shutdown, and the error vLLM
     then raises about the groups already gone is swallowed.
[V9] A start that fails (too little memory for the KV cache, an unsupported model) is one line naming the
     model folder and vLLM's own reason, with the memory settings that decide it; never a traceback.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Optional

import torch

from grpo.config import UserError, at_least, require, within
from grpo.rollout import Rollout, Sampling, completion_mask, stop_string_positions


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


@dataclass
class VLLMSettings:
    """vLLM as the sampler (TRL's names and meanings; ALGORITHMS.md §5)."""

    use_vllm: bool = False
    """sample with vLLM instead of Hugging Face generate (needs the vLLM venv: VLLM=1 bash scripts/setup_env.sh)"""
    vllm_mode: Literal["colocate"] = "colocate"
    """colocate: the vLLM engine runs inside each training process (grpo.vllm_engine [V1])"""
    vllm_gpu_memory_utilization: float = 0.3
    """fraction of GPU memory vLLM may take (on the CPU build: of RAM, unless VLLM_CPU_KVCACHE_SPACE sets GiB)"""
    vllm_enable_sleep_mode: bool = False
    """CUDA: free vLLM's weights and KV cache between samplings (grpo.vllm_engine [V7]); the CPU build has none"""
    vllm_max_model_length: Optional[int] = None
    """most tokens (prompt + completion) vLLM plans its KV cache for; null = the model's positions"""
    vllm_enforce_eager: bool = False
    """skip vLLM's torch.compile / CUDA graphs: starts in seconds instead of minutes, samples somewhat slower"""
    vllm_importance_sampling_correction: bool = True
    """weight each token's loss by the sampler–trainer IS ratio (vLLM, sampler_dtype=bfloat16; ALGORITHMS.md §5)"""
    vllm_importance_sampling_mode: Literal["token_truncate", "token_mask", "sequence_truncate",
                                           "sequence_mask"] = "sequence_mask"
    """token or sequence ratio exp(lp_old − lp_vllm), truncated to [clip_min, clip_max] or masked (0) outside"""
    vllm_importance_sampling_clip_min: Optional[float] = None
    """lower bound C_min of the IS ratio (null = none)"""
    vllm_importance_sampling_clip_max: Optional[float] = 3.0
    """upper bound C_max of the IS ratio (null = none)"""

    def validate(self) -> None:
        """Ranges and rules, checked before anything loads (grpo.config [D9])."""
        within(self, "vllm_gpu_memory_utilization", 0, 1, low_open=True)
        at_least(self, "vllm_max_model_length", 1, why="null = the model's positions")
        low, high = self.vllm_importance_sampling_clip_min, self.vllm_importance_sampling_clip_max
        require(self, "vllm_importance_sampling_clip_min", low is None or low >= 0,
                "must be >= 0 (a ratio), or null = no bound")
        require(self, "vllm_importance_sampling_clip_max", high is None or high > 0,
                "must be > 0 (a ratio), or null = no bound")
        require(self, "vllm_importance_sampling_clip_max", low is None or high is None or high > low,
                f"must be > vllm_importance_sampling_clip_min = {low}")
        require(self, "vllm_importance_sampling_mode", not (
            self.vllm_importance_sampling_mode.endswith("truncate") and low is None and high is None),
                "a *_truncate mode needs vllm_importance_sampling_clip_min or _clip_max (grpo.correction [C5])")
        bf16_sampler = getattr(self, "sampler_dtype", "float32") != "float32"  # our loop in bf16 (grpo.decode_linears [G9])
        require(self, "sampler_dtype", not (bf16_sampler and self.use_vllm),
                "must be float32 with use_vllm = true: vLLM samples in its own dtype (this sets our decoding loop's)")
        other_sampler = self.use_vllm or bf16_sampler  # the IS correction applies (ALGORITHMS.md §5)
        require(self, "vllm_importance_sampling_mode", not other_sampler or getattr(self, "loss_type", "") != "vespo"
                or not self.vllm_importance_sampling_correction or self.vllm_importance_sampling_mode.startswith("token"),
                "must be token_truncate or token_mask with loss_type = vespo, which folds the token weights into its "
                "sequence weight (grpo.loss)")
        if not self.use_vllm:
            return
        require(self, "use_vllm", vllm_installed(),
                f"vLLM is not installed in this Python ({sys.executable}); `VLLM=1 bash scripts/setup_env.sh` "
                "builds .venv-vllm with it (README, vLLM)")
        require(self, "use_vllm", not getattr(self, "load_in_4bit", False),
                "cannot sample a 4-bit (bitsandbytes) model with vLLM here; set load_in_4bit = false")
        require(self, "use_vllm", getattr(self, "sharding", "none") == "none",
                "is not yet combined with sharding = fsdp2 (the sync would gather the full model on every rank)")
        device = str(getattr(self, "device", "auto"))
        on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        require(self, "vllm_enable_sleep_mode", not (self.vllm_enable_sleep_mode and on_cpu),
                "the CPU build of vLLM has no sleep mode; set it to false on the CPU")


# ------------------------------------------------------------------------------------- weights
@torch.no_grad()
def checkpoint_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's weights under the names of its Hugging Face checkpoint, a LoRA adapter merged [V5].

    PEFT wraps a adapted Linear as `<name>.base_layer` + `<name>.lora_A/B.<adapter>`; this yields
    `<name>.weight` = base + Σ over the active adapters of get_delta_weight (scaling included), skips the
    adapter tensors (the KL reference adapter too: it is never active while sampling), and for
    `modules_to_save` yields the active adapter's trained copy under the original name.
    """
    from grpo.policy import causal_lm

    lm = causal_lm(model)
    peft_model = getattr(model, "module", model)
    if not hasattr(peft_model, "get_base_model"):
        yield from lm.state_dict().items()
        return
    from grpo.policy import lora_layers, merged_lora_weight

    merged = {f"{name}.base_layer.weight": merged_lora_weight(m) for name, m in lora_layers(lm)}
    active_adapter = peft_model.active_adapter
    for name, tensor in lm.state_dict().items():
        if ".lora_" in name or ".original_module." in name:
            continue
        if ".modules_to_save." in name:
            head, _, rest = name.partition(".modules_to_save.")
            adapter, _, leaf = rest.partition(".")
            if adapter != active_adapter:
                continue
            name = f"{head}.{leaf}"
        yield name.replace(".base_layer.", "."), merged.get(name, tensor)


# ------------------------------------------------------------------------------------- engine
@contextlib.contextmanager
def _kept_rng_states():
    """Python, NumPy and torch RNG states as they were before the block [V6]."""
    import numpy as np

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class VLLMEngine:
    """One colocated vLLM engine: `sample` (→ Rollout), `sync` (weights in), `close`."""

    def __init__(self, llm, *, sleep_mode: bool, start_seconds: float):
        self.llm, self.sleep_mode, self.start_seconds = llm, sleep_mode, start_seconds
        self.asleep = False

    @classmethod
    def start(cls, s: VLLMSettings, model_path: str, *, dtype: str, seed: int) -> "VLLMEngine":
        """Start vLLM on the checkpoint folder `model_path` (the base model; the trainer's weights come by sync)."""
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # [V1]
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        t0 = time.perf_counter()
        with _kept_rng_states():  # [V6]
            from vllm import LLM

            try:
                llm = LLM(model=model_path, dtype=dtype, seed=seed, enable_prefix_caching=True,
                          generation_config="vllm", logprobs_mode="processed_logprobs",  # [V2] [V3]
                          gpu_memory_utilization=s.vllm_gpu_memory_utilization,
                          max_model_len=s.vllm_max_model_length, enforce_eager=s.vllm_enforce_eager,
                          enable_sleep_mode=s.vllm_enable_sleep_mode)
            except (ValueError, RuntimeError, MemoryError) as e:  # vLLM's own message, in one line [V9]
                first = " ".join(str(e).split())[:400]
                raise UserError(f"vLLM could not start on {model_path}: {type(e).__name__}: {first} (memory: "
                                "vllm_gpu_memory_utilization is the fraction of GPU memory, of RAM on the CPU "
                                "build, that vLLM may use in all; VLLM_CPU_KVCACHE_SPACE=<GiB> sets the CPU KV "
                                "cache directly)") from None
        # every weight reload warns that RotaryEmbedding (it has no weights) "failed to load": not a problem
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
        return cls(llm, sleep_mode=s.vllm_enable_sleep_mode, start_seconds=time.perf_counter() - t0)

    def sync(self, model) -> float:
        """Push the trainer's weights into vLLM and reset its prefix cache [V5]; returns the seconds taken."""
        t0 = time.perf_counter()
        if self.asleep:
            self.llm.wake_up(tags=["weights"])  # [V7]
        weights = list(checkpoint_weights(model))
        self.llm.collective_rpc("reload_weights", kwargs=dict(weights_iterator=weights))
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self.llm.reset_prefix_cache()
        return time.perf_counter() - t0

    @torch.no_grad()
    def sample(self, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, G: int,
               sampling: Sampling, seed: int, eos_ids: list[int]) -> Rollout:
        """G completions for each of the B left-padded prompts [B, P], as grpo.rollout.sample_group builds them."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
        B = prompt_ids.shape[0]
        prompts = [TokensPrompt(prompt_token_ids=prompt_ids[b][prompt_mask[b]].tolist()) for b in range(B)]
        params = [SamplingParams(n=G, temperature=sampling.temperature, top_p=sampling.top_p,
                                 top_k=sampling.top_k if sampling.top_k > 0 else -1, min_p=sampling.min_p,
                                 max_tokens=sampling.max_new_tokens, stop=list(sampling.stop_strings) or None,
                                 stop_token_ids=list(eos_ids), include_stop_str_in_output=True, logprobs=0,
                                 seed=(seed + b) % 2**63, skip_special_tokens=False, detokenize=True)
                  for b in range(B)]  # [V2] [V6]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        if self.sleep_mode:
            self.llm.sleep(level=2)  # [V7]
            self.asleep = True
        rows = [c for out in outputs for c in sorted(out.outputs, key=lambda c: c.index)]  # [B·G], group order
        return rollout_from_outputs(tokenizer, prompt_ids, prompt_mask, rows, G=G, eos_ids=eos_ids,
                                    stop_strings=sampling.stop_strings)

    def close(self) -> None:
        """Stop the engine; call after grpo.distributed.shutdown under torchrun [V8]."""
        with contextlib.suppress(Exception):
            self.llm.llm_engine.engine_core.shutdown()
        self.llm = None


def rollout_from_outputs(tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, rows: list[Any], *,
                         G: int, eos_ids: list[int], stop_strings: tuple[str, ...]) -> Rollout:
    """vLLM's completion outputs (rows b·G … b·G+G−1 for prompt b) → Rollout, masks as grpo.rollout [V4]."""
    device = prompt_ids.device
    N = len(rows)
    lengths = torch.tensor([len(c.token_ids) for c in rows])  # [N]
    T = max(1, int(lengths.max()))
    ids = torch.full((N, T), tokenizer.pad_token_id, dtype=torch.long)
    logp = torch.zeros(N, T)
    for i, c in enumerate(rows):
        ids[i, :len(c.token_ids)] = torch.tensor(c.token_ids, dtype=torch.long)
        if c.logprobs is not None:  # one {sampled id: Logprob} per token; NaN where vLLM scored none
            logp[i, :len(c.token_ids)] = torch.tensor(
                [d[t].logprob if d and t in d else float("nan") for d, t in zip(c.logprobs, c.token_ids)])
    in_row = torch.arange(T)[None, :] < lengths[:, None]  # [N, T] tokens vLLM gave (the rest is padding)
    stop_at = stop_string_positions(tokenizer, ids, stop_strings)  # [N]
    cmask, ended = completion_mask(ids.masked_fill(~in_row, -1), eos_ids=eos_ids, stop_at=stop_at)
    missed = torch.tensor([c.finish_reason == "stop" for c in rows]) & ~ended  # vLLM saw a stop we do not [V4]
    cmask, ended = (cmask | missed[:, None]) & in_row, ended | missed  # such a row ends at its last token
    ids = ids.masked_fill(~cmask, tokenizer.pad_token_id)
    texts = [tokenizer.decode(row[m], skip_special_tokens=True) for row, m in zip(ids, cmask)]
    return Rollout(prompt_ids=prompt_ids.repeat_interleave(G, 0), prompt_mask=prompt_mask.repeat_interleave(G, 0),
                   completion_ids=ids.to(device), completion_mask=cmask.to(device), truncated=(~ended).to(device),
                   logp=logp.masked_fill(~cmask, 0.0).to(device), entropy=torch.zeros(N, T, device=device),
                   completions=texts, sampler="vllm")


def model_dtype(dtype: str, *, bf16: bool) -> str:
    """vLLM's dtype: the trainer's, or bfloat16 where the trainer's forward runs under bf16 autocast."""
    return "bfloat16" if bf16 else {"float64": "float32"}.get(dtype, dtype)

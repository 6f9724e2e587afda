"""A decoding step of a Llama-family model written out, for grpo.decode's loop [G10]: the same equations as
the Hugging Face modules, without their per-call work.

    step = decoding_step(model, rows, N=N, max_len=P + L)    # None: this model keeps the HF modules (why: below)
    step.load_prompt(prefilled_cache, G)                     # the B prompts' cache, each repeated G times
    logits = step(ids, positions, col, attention)            # [N] new tokens at column col → [N, V] fp32

Per layer, for the one new position of each of the N rows (x [N, D], the token's embedding to begin with):

    h        = rmsnorm(x)·w_in                          rmsnorm(x) = x / √(mean(x²) + ε)
    q, k, v  = h·W_qᵀ + b_q,  h·W_kᵀ + b_k,  h·W_vᵀ + b_v     (b: Qwen2's; none in Llama)
    a        = attention(q, k, v; K, V, cache column col)   RoPE, the cache write and one query per row
    x        = x + a·W_oᵀ
    h        = rmsnorm(x)·w_post
    x        = x + (silu(h·W_gateᵀ) ⊙ h·W_upᵀ)·W_downᵀ
logits = (rmsnorm(x)·w_norm)·W_headᵀ

[G10] Why: at the main job's shape (8 rows, smollm2-135m's 30 layers) the Hugging Face modules spent almost as
      long in their per-call Python and small ops (module calls, the cache's update, the mask, the rotary
      embedding's half a dozen ops on q and k, SDPA's dispatch) as the linear layers take to stream the
      weights: 50.9 ms a decoding step against 24.2 ms of matmuls. Written out, a layer is its seven matmuls
      (grpo.decode_linears' row functions [G8]: merged LoRA, kernels.few_rows, the bf16 sampler alike), one
      kernels.decode_attention call, two RMS norms and the MLP's two pointwise ops: 35.0 ms a step
      (scripts/bench_generate.py, ours against ours_hf_modules, docs/bench_generate.md).
      The same functions of the same weights: the logits differ from the modules' by fp32 rounding only
      (tests/test_decode_step.py: to 1e-5 against the model's own forward; the recorded log-probs against a
      forward pass, as before).
      Which models: model_type llama or qwen2 (the Llama layer, Qwen2 with q/k/v biases) whose every layer is full
      attention (no sliding window), SiLU MLP, pretraining_tp 1, plain embedding, RMS norms, a head and
      projections that decoding_linears patched (plain or LoRA Linear), fp32 on the CPU, no autocast, and
      kernels.decode_attention available. Anything else keeps the Hugging Face modules (`unsupported` says why;
      Sampling.decode_step = "hf" asks for them).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from kernels.decode_attention import decode_attention, decode_attention_unavailable

MODEL_TYPES = ("llama", "qwen2")  # [G10]
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def unsupported(lm, rows: dict) -> str | None:
    """None when `lm` (a Hugging Face CausalLM) can decode by LlamaStep with these row functions, else why not
    [G10]."""
    c = lm.config
    inner = getattr(lm, "model", None)
    if c.model_type not in MODEL_TYPES:
        return f"model_type {c.model_type!r} is not one of {', '.join(MODEL_TYPES)}"
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "not the Llama layout (model.layers, model.rotary_emb)"
    if getattr(c, "hidden_act", None) != "silu" or getattr(c, "pretraining_tp", 1) != 1:
        return f"hidden_act {getattr(c, 'hidden_act', None)!r}, pretraining_tp {getattr(c, 'pretraining_tp', 1)}"
    if any(t != "full_attention" for t in getattr(c, "layer_types", None) or ()) \
            or getattr(c, "use_sliding_window", False):
        return "sliding-window attention"
    p = next(lm.parameters())
    if p.device.type != "cpu" or p.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
        return f"{p.dtype} on {p.device}{', under autocast' if torch.is_autocast_enabled('cpu') else ''}"
    if type(inner.embed_tokens) is not torch.nn.Embedding or lm.get_output_embeddings() not in rows:
        return "the embedding or the LM head is not a plain layer"
    if not _is_rms_norm(inner.norm):
        return "the final norm is not an RMS norm"
    for i, layer in enumerate(inner.layers):
        if not (_is_rms_norm(layer.input_layernorm) and _is_rms_norm(layer.post_attention_layernorm)):
            return f"layer {i}: its norms are not RMS norms"
        if any(layer.get_submodule(name) not in rows for name in PROJECTIONS):
            return f"layer {i}: a projection decoding_linears did not patch (quantised?)"
        if layer.self_attn.scaling != layer.self_attn.head_dim ** -0.5:
            return f"layer {i}: attention scaling {layer.self_attn.scaling}"
    return decode_attention_unavailable()


def decoding_step(model, rows: dict, *, N: int, max_len: int) -> "LlamaStep | None":
    """A LlamaStep for the CausalLM inside `model` (DDP / PEFT wrappers allowed), or None where unsupported
    [G10]. rows: grpo.decode_linears' {module: rows}; N rows; max_len cache columns."""
    from grpo.policy import causal_lm

    lm = causal_lm(model)
    why = unsupported(lm, rows)
    if why is not None and why == decode_attention_unavailable() and not why.startswith("switched off"):
        warnings.warn(f"grpo.decode_step: sampling calls the Hugging Face modules, not the written-out Llama step "
                      f"(kernels.decode_attention: {why}); the same samples, slower", stacklevel=3)
    return None if why is not None else LlamaStep(lm, rows, N=N, max_len=max_len)


class LlamaStep:
    """The decoding step of the module docstring, with its own KV cache K, V [N, Hkv, max_len, hd] per layer."""

    def __init__(self, lm, rows: dict, *, N: int, max_len: int):
        c, inner = lm.config, lm.model
        attn = inner.layers[0].self_attn
        self.scale = attn.scaling
        self.embed, self.rotary = inner.embed_tokens.weight, inner.rotary_emb
        self.final = (inner.norm.weight, inner.norm.variance_epsilon)
        self.head = rows[lm.get_output_embeddings()]
        self.layers = []
        for layer in inner.layers:
            K = torch.zeros(N, c.num_key_value_heads, max_len, attn.head_dim)  # [N, Hkv, S, hd]
            self.layers.append((
                (layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon),
                *(rows[layer.get_submodule(name)] for name in PROJECTIONS),
                (layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon),
                K, torch.zeros_like(K)))

    def load_prompt(self, cache, G: int) -> None:
        """Copy a prefilled transformers cache of B rows and P − 1 positions into columns [0, P − 1) of the
        N = B·G rows, each prompt's row repeated G times (grpo.decode [G3])."""
        for (*_, K, V), layer in zip(self.layers, getattr(cache, "layers", ())):
            keys = getattr(layer, "keys", None)
            if keys is not None and keys.numel():
                K[:, :, :keys.shape[2]] = keys.repeat_interleave(G, 0)  # [N, Hkv, P − 1, hd]
                V[:, :, :keys.shape[2]] = layer.values.repeat_interleave(G, 0)

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, col: int, attention: torch.Tensor) -> torch.Tensor:
        """logits [N, V] fp32 of the next token, from ids [N] at positions [N] written into cache column col;
        attention [N, ≥ col + 1] int64 marks the attended columns."""
        x = self.embed[ids]  # [N, D]
        cos, sin = self.rotary(x, positions[:, None])  # [N, 1, hd] each, the model's own RoPE
        cos, sin = cos[:, 0], sin[:, 0]  # [N, hd]
        for (w_in, eps_in), q_p, k_p, v_p, o_p, gate, up, down, (w_post, eps_post), K, V in self.layers:
            h = _rmsnorm(x, w_in, eps_in)
            a = decode_attention(q_p(h), k_p(h), v_p(h), cos, sin, K, V, col=col, mask=attention, scale=self.scale)
            x = x + o_p(a)  # [N, D]
            h = _rmsnorm(x, w_post, eps_post)
            x = x + down(F.silu(gate(h)) * up(h))
        return self.head(_rmsnorm(x, *self.final))  # [N, V]


def _is_rms_norm(module) -> bool:
    """A Hugging Face *RMSNorm (LlamaRMSNorm, Qwen2RMSNorm): weight and variance_epsilon, _rmsnorm's ops."""
    return type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon") \
        and isinstance(getattr(module, "weight", None), torch.Tensor)


def _rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight · x / √(mean(x²) + ε) over the last dimension, in the ops and order of Hugging Face's LlamaRMSNorm
    (fp32 in, fp32 out)."""
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

"""Per-token log-probs (and entropies) of completion tokens under a policy, from one forward pass.

    ids    = [prompt ‖ completion]                          [N, P + T]
    h      = decoder(ids)[:, P−1 : P+T−1]                   [N, T, D]  position P−1+t predicts token t
    lp, H  = kernels.lm_head_logprobs_and_entropy(h, W_head, completion_ids, temperature=T)   [N, T]

[D1] Alignment (ALGORITHMS.md): hidden state P−1+t predicts completion token t. Prompts are left
     padded, so every prompt ends at column P−1 and the slice is the same for every row.
[D2] Position ids count real tokens only (cumsum of the attention mask − 1), as `generate` does, so
     a left-padded prompt sees the same positions as an unpadded one.
[D3] The LM head is applied by the kernel in chunks over tokens and vocabulary: the [N, T, V] logits
     never exist. A head that is not a plain Linear (LoRA on the head, soft-capping) falls back to
     materialised logits through `kernels.token_logprobs_and_entropy`.
[D4] The reference policy of a LoRA run is the same model with the adapter disabled: no second copy.
     When training continues an existing adapter, the reference is a frozen copy of it instead
     (grpo.models.add_reference_adapter [D5]), so the KL anchors to the model as loaded, as in TRL.
[D5] Shared prompt: the G completions of a group share one prompt, so the decoder runs each distinct
     prompt once, keeps its KV cache, repeats the cache along the batch and then runs only the
     completions on top of it (ALGORITHMS.md §2: the same equations, ≈ G× fewer prompt FLOPs and
     activations). Gradients reach the prompt's K/V through the repeat, which sums them over the
     group, exactly as the joint pass does row by row. Row order does not matter: consecutive equal
     prompt rows form a group. The joint pass is kept for batches without repeated prompts, under
     gradient checkpointing (Hugging Face turns the cache off there) and for models whose cache
     cannot be indexed along the batch.
[D6] The KV cache is passed under the keyword the installed transformers names it (`cache_kwarg`):
     `past_key_values` is deprecated in 5.2x and removed in 5.40, and `cache` does not exist before.
"""
from __future__ import annotations

import contextlib

import torch

from kernels import lm_head_logprobs_and_entropy, token_logprobs_and_entropy


def causal_lm(model):
    """The Hugging Face CausalLM inside DDP / PEFT wrappers."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def completion_logprobs(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                        completion_mask: torch.Tensor, *, temperature: float = 1.0,
                        share_prompt: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp, entropy) [N, T] fp32 of completion tokens given prompts; 0 where completion_mask is False.

    Args: prompt_ids/prompt_mask [N, P] left padded; completion_ids/completion_mask [N, T] right padded.
    share_prompt: run each distinct prompt once [D5] (same result; False forces the joint pass).
    Differentiable when called with grad enabled (entropy too, for an entropy bonus).
    """
    lm = causal_lm(model)
    hidden = completion_hidden_states(lm, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                      share_prompt=share_prompt)  # [N, T, D]
    head = lm.get_output_embeddings()
    if type(head) is torch.nn.Linear:  # [D3]
        return lm_head_logprobs_and_entropy(hidden, head.weight, completion_ids, temperature=temperature,
                                            bias=head.bias, mask=completion_mask)
    logits = head(hidden)  # [N, T, V]
    return token_logprobs_and_entropy(logits, completion_ids, temperature=temperature, mask=completion_mask)


def completion_hidden_states(lm, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                             completion_mask: torch.Tensor, *, share_prompt: bool = True) -> torch.Tensor:
    """Final hidden states [N, T, D] of the decoder of `lm`, row t predicting completion token t [D1]."""
    mask = torch.cat([prompt_mask, completion_mask], 1).long()  # [N, P + T]
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # [D2]
    first, inverse = prompt_groups(prompt_ids, prompt_mask)
    if (share_prompt and first.numel() < prompt_ids.shape[0] and completion_ids.shape[1] > 0
            and not (lm.training and _checkpointing(lm))):
        hidden = _shared_prompt_hidden(lm, prompt_ids, completion_ids, mask, position_ids, first, inverse)
        if hidden is not None:
            return hidden
    P = prompt_ids.shape[1]
    ids = torch.cat([prompt_ids, completion_ids], 1)  # [N, P + T]
    out = lm.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
    return out.last_hidden_state[:, P - 1:-1]  # [N, T, D]  [D1]


def cache_kwarg(module) -> str:
    """The keyword a Hugging Face forward takes its KV cache by: `cache` (transformers ≥ 5.2x; the old
    `past_key_values` warns and goes in 5.40) or `past_key_values` (older versions) [D6]."""
    import inspect

    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _checkpointing(lm) -> bool:
    flag = "is_activation_checkpointing" if hasattr(type(lm), "is_activation_checkpointing") \
        else "is_gradient_checkpointing"  # renamed in transformers 5
    return bool(getattr(lm, flag, False))


def prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first [U], inverse [N]): runs of equal consecutive prompt rows; row i uses prompt first[inverse[i]]."""
    same = ((prompt_ids[1:] == prompt_ids[:-1]) & (prompt_mask[1:] == prompt_mask[:-1])).all(1)  # [N − 1]
    starts = torch.cat([torch.ones(1, dtype=torch.bool, device=same.device), ~same])  # [N]
    return starts.nonzero().squeeze(1), starts.long().cumsum(0) - 1


def _shared_prompt_hidden(lm, prompt_ids, completion_ids, mask, position_ids, first, inverse):
    """Hidden states [N, T, D] that predict the completion tokens, each distinct prompt decoded once [D5].

    Returns None when the model's cache cannot be indexed along the batch (the caller runs the joint pass).
    """
    from transformers import DynamicCache

    P, T = prompt_ids.shape[1], completion_ids.shape[1]
    decoder = lm.get_decoder()
    try:
        cache = DynamicCache(config=lm.config)
        key = cache_kwarg(decoder)  # [D6]
        out = decoder(input_ids=prompt_ids[first], attention_mask=mask[first, :P],
                      position_ids=position_ids[first, :P], **{key: cache}, use_cache=True)
        cache.batch_select_indices(inverse)  # [U, …] → [N, …]; autograd sums the group's gradients
    except (AttributeError, TypeError, ValueError, NotImplementedError):
        return None
    last = out.last_hidden_state[inverse, -1:]  # [N, 1, D]  position P−1 predicts completion token 0 [D1]
    if T == 1:
        return last
    rest = decoder(input_ids=completion_ids[:, :-1], attention_mask=mask[:, :-1],
                   position_ids=position_ids[:, P:-1], **{key: cache}, use_cache=True,
                   cache_position=torch.arange(P, P + T - 1, device=mask.device)).last_hidden_state  # [N, T−1, D]
    return torch.cat([last, rest], 1)  # [N, T, D]


@contextlib.contextmanager
def reference_policy(model, ref_model=None):
    """Yield the reference policy: `ref_model` if given, else `model` with its frozen reference adapter
    active when it has one, else `model` with its LoRA adapter off [D4]."""
    if ref_model is not None:
        yield ref_model
        return
    from grpo.models import REFERENCE_ADAPTER

    peft_model = getattr(model, "module", model)
    if not hasattr(peft_model, "disable_adapter"):
        raise ValueError("beta > 0 without LoRA needs a separate reference model (ref_model=...)")
    if REFERENCE_ADAPTER not in getattr(peft_model, "peft_config", {}):
        with peft_model.disable_adapter():
            yield model
        return
    active = peft_model.active_adapter
    trainable = {p: p.requires_grad for p in peft_model.parameters()}  # set_adapter changes requires_grad
    peft_model.set_adapter(REFERENCE_ADAPTER)  # (flags restored below: works on every peft >= 0.17)
    try:
        yield model
    finally:
        peft_model.set_adapter(active)
        for p, flag in trainable.items():
            p.requires_grad_(flag)


def lora_layers(model) -> list:
    """(name, PEFT LoRA layer) for each layer of `model` whose adapter is active and not merged."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, LoraLayer) and not m.disable_adapters and not m.merged
            and any(a in m.lora_A for a in m.active_adapters)]


@torch.no_grad()
def merged_lora_weight(layer) -> torch.Tensor:
    """W + Σ_active ΔW of a PEFT LoRA layer (ΔW = B·A·scaling, PEFT's get_delta_weight), a new tensor.

    An adapter of a plain LoRA Linear (2-D A and B in W's dtype, W stored [out, in]: no fan_in_fan_out, no
    DoRA) is added by one addmm, W + scaling·(B·A), which reads and writes W once: smollm2-135m's 210 LoRA
    layers (r 16) merged in 69 ms against 209 ms as W + get_delta_weight(a) (2 threads here, once per
    sampling call: grpo.decode_linears [G8]); any other adapter by PEFT's get_delta_weight.
    """
    merged = layer.get_base_layer().weight
    for a in (a for a in layer.active_adapters if a in layer.lora_A):
        A, B = layer.lora_A[a].weight, layer.lora_B[a].weight  # [r, in], [out, r]
        plain = (not getattr(layer, "fan_in_fan_out", False) and not getattr(layer, "use_dora", {}).get(a, False)
                 and A.dim() == B.dim() == merged.dim() == 2 and A.dtype == B.dtype == merged.dtype
                 and (B.shape[0], A.shape[1]) == tuple(merged.shape))
        merged = torch.addmm(merged, B, A, alpha=layer.scaling[a]) if plain else merged + layer.get_delta_weight(a)
    return merged if merged is not layer.get_base_layer().weight else merged.clone()

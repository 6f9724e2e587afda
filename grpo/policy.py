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
                        completion_mask: torch.Tensor, *, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp, entropy) [N, T] fp32 of completion tokens given prompts; 0 where completion_mask is False.

    Args: prompt_ids/prompt_mask [N, P] left padded; completion_ids/completion_mask [N, T] right padded.
    Differentiable when called with grad enabled (entropy too, for an entropy bonus).
    """
    P = prompt_ids.shape[1]
    ids = torch.cat([prompt_ids, completion_ids], 1)  # [N, P + T]
    mask = torch.cat([prompt_mask, completion_mask], 1).long()  # [N, P + T]
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # [D2]
    lm = causal_lm(model)
    out = lm.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
    hidden = out.last_hidden_state[:, P - 1:-1]  # [N, T, D]  [D1]
    head = lm.get_output_embeddings()
    if type(head) is torch.nn.Linear:  # [D3]
        return lm_head_logprobs_and_entropy(hidden, head.weight, completion_ids, temperature=temperature,
                                            bias=head.bias, mask=completion_mask)
    logits = head(hidden)  # [N, T, V]
    return token_logprobs_and_entropy(logits, completion_ids, temperature=temperature, mask=completion_mask)


@contextlib.contextmanager
def reference_policy(model, ref_model=None):
    """Yield the reference policy: `ref_model` if given, else `model` with its LoRA adapter off [D4]."""
    if ref_model is not None:
        yield ref_model
        return
    peft_model = getattr(model, "module", model)
    if not hasattr(peft_model, "disable_adapter"):
        raise ValueError("beta > 0 without LoRA needs a separate reference model (ref_model=...)")
    with peft_model.disable_adapter():
        yield model

"""Implicit reward and preference accuracy: how a policy ranks a chosen answer against a rejected one.

GEM / GenPref-SEGA (arXiv 2511.13007, evaluation; ALGORITHMS.md §4):

    r(q, a)     = β · Σ_t lp_θ(a_t | q, a_<t)          summed over the completion tokens of a
    r̄(q, a)     = β · (1/|a|) Σ_t lp_θ(a_t | q, a_<t)   length-normalised variant
    accuracy    = (1/n) Σ_pairs 1[r(q, chosen) > r(q, rejected)],   ties = (1/n) Σ 1[=]  (reported apart)

Symbol → code:

    q           the chat-formatted prompt text (`prompt_text`)
    a           the completion text, followed by the EOS token (`completion_text`)
    a_t         completion tokens of the *joint* tokenisation of q‖a   completion_mask (B, L) bool
    Σ_t lp_θ    logp_sum (B,) fp32;  |a| = num_tokens (B,)
    β           beta

Implementation details:

[D1] q‖a is tokenised as one string and the completion tokens are found from the tokenizer's character
     offsets: token j is a completion token iff its span ends after len(q). BPE can merge across the
     boundary ("… = 4" ‖ "2." → " 42", "."), so the last len(tokenize(a)) tokens can be the wrong ones;
     a token that straddles the boundary counts as a completion token (it is the first one carrying
     completion text) and is predicted from the prompt tokens before it, so Σ over the completion tokens
     is exactly log p(joint tokens after the prompt part | prompt part). Needs a fast tokenizer.
[D2] The prompt goes through the tokenizer's chat template (user turn, generation prompt) when it has one,
     as in training; message lists are accepted too. The completion ends with the EOS token, so a
     policy that would keep talking is charged for it (TRL's DPO does the same). Special tokens are
     not added again: the template already wrote them.
[D3] Batches reuse grpo.policy.completion_logprobs: prompt parts left padded, completion parts right
     padded, position ids counted over real tokens, so a row's reward does not depend on its batch.
[D4] The ranking compares Σ lp_θ before scaling: β > 0 is a positive factor and cannot change it, and
     comparing unscaled sums keeps float rounding of β·x from inventing ties. Ties are exact equality.
[D5] Log-probs at temperature 1 in fp32, under no grad, with the model in eval mode (dropout off); the
     model's train/eval mode is restored afterwards.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from grpo.policy import completion_logprobs
from grpo.sft import joint_tokenize


def format_prompt(tokenizer, prompt: str | Sequence[dict]) -> str:
    """The prompt as the model sees it before its answer: chat template + generation prompt [D2]."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert isinstance(prompt, str), "a tokenizer without a chat template needs string prompts"
    return prompt


def split_prompt_completion(tokenizer, prompt_text: str, completion_text: str) -> tuple[list[int], int]:
    """Tokenise q‖a jointly; return (ids, s) with ids[s:] the completion tokens [D1].

    s = the first token whose character span ends after len(q) (a straddling token belongs to a).
    """
    ids, start = joint_tokenize(tokenizer, prompt_text, completion_text)  # [D1]
    if start == 0 or start == len(ids):
        raise ValueError(f"no {'prompt' if start == 0 else 'completion'} token left after joint "
                         f"tokenisation of {prompt_text[-30:]!r} ‖ {completion_text[:30]!r}")
    return ids, start


def encode_pairs(tokenizer, prompt_texts: Sequence[str], completion_texts: Sequence[str], *,
                 pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Joint tokenisation, split at the offset boundary [D1], in the layout of grpo.policy [D3].

    Returns: prompt_ids, prompt_mask (B, P) left padded; completion_ids, completion_mask (B, T) right
    padded; masks bool.
    """
    splits = [split_prompt_completion(tokenizer, q, a) for q, a in zip(prompt_texts, completion_texts)]
    prompts = [ids[:s] for ids, s in splits]
    completions = [ids[s:] for ids, s in splits]
    P, T = max(map(len, prompts)), max(map(len, completions))
    prompt_ids = torch.tensor([[pad_id] * (P - len(p)) + p for p in prompts])  # (B, P)
    prompt_mask = torch.tensor([[False] * (P - len(p)) + [True] * len(p) for p in prompts])  # (B, P)
    completion_ids = torch.tensor([c + [pad_id] * (T - len(c)) for c in completions])  # (B, T)
    completion_mask = torch.tensor([[True] * len(c) + [False] * (T - len(c)) for c in completions])  # (B, T)
    return prompt_ids, prompt_mask, completion_ids, completion_mask


@torch.no_grad()
def completion_logprob_sums(model, tokenizer, prompt_texts: Sequence[str], completion_texts: Sequence[str], *,
                            batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_t lp_θ(a_t | q, a_<t) and |a| for each (q, a) of exact texts, batched [D1][D3][D5].

    Args: prompt_texts: q as the model sees it (`format_prompt`); completion_texts: a, EOS included.
    Returns: (logp_sum (n,) fp32, num_tokens (n,) long), on the CPU.
    """
    assert len(prompt_texts) == len(completion_texts), "one completion per prompt"
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # [D5]
    sums, counts = [], []
    try:
        for i in range(0, len(prompt_texts), batch_size):
            prompt_ids, prompt_mask, completion_ids, completion_mask = (
                x.to(device) for x in encode_pairs(tokenizer, prompt_texts[i:i + batch_size],
                                                   completion_texts[i:i + batch_size]))
            logp, _ = completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                          temperature=1.0)  # (b, T)
            sums.append(torch.where(completion_mask, logp.float(), 0.0).sum(-1).cpu())  # (b,)
            counts.append(completion_mask.sum(-1).cpu())  # (b,)
    finally:
        model.train(was_training)
    return torch.cat(sums), torch.cat(counts)


def implicit_reward(logp_sum: torch.Tensor, *, beta: float = 1.0) -> torch.Tensor:
    """r(q, a) = β · Σ_t lp_θ(a_t | q, a_<t).  Args/returns: (n,) fp32."""
    return beta * logp_sum


def _accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[float, float]:
    """(fraction chosen > rejected, fraction chosen == rejected) [D4]."""
    return (chosen > rejected).double().mean().item(), (chosen == rejected).double().mean().item()


def preference_accuracy(model, tok, rows: Sequence[dict], *, beta: float = 1.0, batch_size: int = 8) -> dict:
    """Preference accuracy of the implicit reward on pairs {"prompt", "chosen", "rejected"} [D4].

    accuracy = mean 1[r(q, chosen) > r(q, rejected)], ties = mean 1[=], and the same for the
    length-normalised reward r̄. Works on any causal LM, PEFT adapters included.

    Returns: a JSON-ready dict: n, beta, accuracy, ties, accuracy_length_normalized,
    ties_length_normalized, reward_chosen_mean, reward_rejected_mean, margin_mean.
    """
    assert beta > 0, f"beta must be > 0 (a scale of the implicit reward), got {beta}"
    assert len(rows) > 0, "no pairs to evaluate"
    prompts = [format_prompt(tok, r["prompt"]) for r in rows] * 2  # [D2]
    eos = tok.eos_token or ""
    completions = [r["chosen"] + eos for r in rows] + [r["rejected"] + eos for r in rows]  # [D2]
    logp_sum, num_tokens = completion_logprob_sums(model, tok, prompts, completions, batch_size=batch_size)
    n = len(rows)
    chosen, rejected = logp_sum[:n], logp_sum[n:]  # (n,), (n,)
    chosen_mean, rejected_mean = chosen / num_tokens[:n], rejected / num_tokens[n:]  # (n,), (n,)
    accuracy, ties = _accuracy(chosen, rejected)  # [D4]
    accuracy_ln, ties_ln = _accuracy(chosen_mean, rejected_mean)
    r_chosen, r_rejected = implicit_reward(chosen, beta=beta), implicit_reward(rejected, beta=beta)
    return {"n": n, "beta": beta, "accuracy": accuracy, "ties": ties,
            "accuracy_length_normalized": accuracy_ln, "ties_length_normalized": ties_ln,
            "reward_chosen_mean": r_chosen.mean().item(), "reward_rejected_mean": r_rejected.mean().item(),
            "margin_mean": (r_chosen - r_rejected).mean().item()}

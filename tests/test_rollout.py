"""Sampling: truncation, masks, stop strings, and the log-probs recorded while sampling."""
import math

import pytest
import torch

from grpo.models import load_model
from grpo.policy import completion_logprobs
from grpo.rollout import (Sampling, completion_mask, encode_prompts, sample_group, stop_string_positions,
                          truncate_logits)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model("tiny-llama", cache_dir=tmp_path_factory.mktemp("models"), trainable=False)


def _probs(z):
    return torch.softmax(z.double(), -1)


def test_top_k_keeps_exactly_the_k_largest():
    z = torch.tensor([[3.0, 1.0, 2.0, 0.0, -1.0]])
    out = truncate_logits(z, top_k=2)
    assert torch.isfinite(out).tolist() == [[True, False, True, False, False]]


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    z = p.log()
    # mass before each sorted token: 0, .5, .8, .95 → tokens with mass_before < p are kept
    assert torch.isfinite(truncate_logits(z, top_p=0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(truncate_logits(z, top_p=0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(truncate_logits(z, top_p=0.81)).tolist() == [[True, True, True, False]]


def test_min_p_keeps_tokens_above_a_fraction_of_the_max():
    z = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    # threshold 0.4 · 0.5 = 0.2 → keeps 0.5 and 0.3
    assert torch.isfinite(truncate_logits(z, min_p=0.4)).tolist() == [[True, True, False, False]]


def test_truncation_never_empties_a_row():
    z = torch.randn(6, 50)
    out = truncate_logits(z, top_k=1, top_p=1e-6, min_p=0.99)
    assert (torch.isfinite(out).sum(-1) >= 1).all()


def test_completion_mask_ends_at_the_first_eos_inclusive():
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]])
    mask, ended = completion_mask(ids, eos_ids=[2])
    assert mask.int().tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]
    mask, ended = completion_mask(ids, eos_ids=[2], stop_at=torch.tensor([1, 3, -1]))
    assert mask.int().tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]]
    assert ended.tolist() == [True, True, True]


def test_stop_string_position_is_the_token_completing_it(tiny):
    _, tok = tiny
    ids = tok("x = 1 </answer> and more text", add_special_tokens=False, return_tensors="pt")["input_ids"]
    pos = int(stop_string_positions(tok, ids, ["</answer>"])[0])
    assert "</answer>" in tok.decode(ids[0, :pos + 1]) and "</answer>" not in tok.decode(ids[0, :pos])
    assert int(stop_string_positions(tok, ids, ["never"])[0]) == -1


def test_recorded_logprobs_equal_a_forward_pass_on_the_sampled_tokens(tiny):
    model, tok = tiny
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "Hi"}]]
    ids, mask = encode_prompts(tok, prompts)
    torch.manual_seed(0)
    r = sample_group(model, tok, ids, mask, G=3, sampling=Sampling(max_new_tokens=10, temperature=0.7))
    assert r.prompt_ids.shape[0] == 6 and r.completion_ids.shape[0] == 6
    with torch.no_grad():
        logp, entropy = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids,
                                            r.completion_mask, temperature=0.7)
    m = r.completion_mask
    torch.testing.assert_close(r.logp[m], logp[m], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(r.entropy[m], entropy[m], atol=1e-4, rtol=1e-4)
    assert (r.logp[~m] == 0).all() and (r.completion_ids[~m] == tok.pad_token_id).all()
    assert r.truncated.tolist() == [bool(row.all()) and int(row.sum()) == 10 and
                                    int(r.completion_ids[i, -1]) != tok.eos_token_id
                                    for i, row in enumerate(m)]


def test_sampling_scores_the_truncated_distribution_when_asked(tiny):
    model, tok = tiny
    ids, mask = encode_prompts(tok, [[{"role": "user", "content": "Count to ten."}]])
    torch.manual_seed(1)
    r = sample_group(model, tok, ids, mask, G=2, sampling=Sampling(max_new_tokens=6, top_k=3, score="sampling"))
    m = r.completion_mask
    assert (r.entropy[m] <= math.log(3) + 1e-5).all()  # at most 3 tokens in the support
    assert (r.logp[m] >= math.log(1 / 3) - 1e-2).any()  # a token of a 3-way support is never that unlikely


def test_prompt_prefill_once_per_group_gives_the_same_samples_as_plain_generate(tiny):
    model, tok = tiny
    prompts = [[{"role": "user", "content": "Name a fruit."}], [{"role": "user", "content": "A longer prompt here."}]]
    ids, mask = encode_prompts(tok, prompts)
    torch.manual_seed(3)
    grouped = sample_group(model, tok, ids, mask, G=2, sampling=Sampling(max_new_tokens=8))
    torch.manual_seed(3)
    plain = sample_group(model, tok, ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0), G=1,
                         sampling=Sampling(max_new_tokens=8))
    assert torch.equal(grouped.completion_ids, plain.completion_ids)

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


# ------------------------------------------------------------------- a checkpoint's generation_config (issue #13)
# Every field of transformers 5.24's GenerationConfig that builds a logits processor or warper in
# `_get_logits_processor`, set to a value that changes the samples or what they are recorded from
# (silently: sampling does not fail), and the fields that change the decoding mode, length or output
# (most of those fail loudly). Sampling must apply none of them [D5].
PROCESSOR_FIELDS = {
    # processors that transformers runs *before* ours (the recorded log-probs would describe them)
    "repetition_penalty": 1.5, "no_repeat_ngram_size": 2, "encoder_repetition_penalty": 1.5,
    "encoder_no_repeat_ngram_size": 2, "bad_words_ids": [[40], [42, 43]], "suppress_tokens": list(range(30, 40)),
    "begin_suppress_tokens": list(range(50, 60)), "sequence_bias": [[[44], 4.0]], "min_new_tokens": 8,
    "min_length": 24, "forced_bos_token_id": 45, "forced_eos_token_id": 2,
    "exponential_decay_length_penalty": [9, 1.5], "guidance_scale": 1.5, "remove_invalid_values": True,
    # warpers that transformers runs *after* ours (the samples would not follow the recorded log-probs)
    "temperature": 0.5, "top_k": 5, "top_p": 0.5, "min_p": 0.3, "typical_p": 0.5, "epsilon_cutoff": 0.05,
    "eta_cutoff": 0.05, "top_h": 0.5, "watermarking_config": {"greenlist_ratio": 0.25, "bias": 4.0},
    "renormalize_logits": True,
}
MODE_FIELDS = {
    "do_sample": False, "num_beams": 2, "num_return_sequences": 2, "prompt_lookup_num_tokens": 3,
    "stop_strings": ["e"], "token_healing": True, "max_length": 30, "max_time": 1e-9,
    "cache_implementation": "static", "use_cache": False, "return_dict_in_generate": True, "output_scores": True,
}


@pytest.fixture(scope="module", params=["processors", "processors+modes"])
def hostile_path(request, tiny, tmp_path_factory):
    """A copy of tiny-llama (same weights) whose generation_config.json sets the fields above."""
    import json
    import shutil

    fields = PROCESSOR_FIELDS if request.param == "processors" else {**PROCESSOR_FIELDS, **MODE_FIELDS}
    path = tmp_path_factory.mktemp("hostile") / "tiny-llama-hostile"
    shutil.copytree(tiny[0].name_or_path, path)  # the cached folder the fixture loaded
    config = json.loads((path / "generation_config.json").read_text())
    (path / "generation_config.json").write_text(json.dumps({**config, **fields}))
    return path


def _sample(model, tok, seed=0, loop="decode", **sampling):
    prompts = [[{"role": "user", "content": "What is 2 + 3? Count to ten."}], [{"role": "user", "content": "Hi"}]]
    ids, mask = encode_prompts(tok, prompts)
    torch.manual_seed(seed)
    return sample_group(model, tok, ids, mask, G=3, sampling=Sampling(**{"max_new_tokens": 12, **sampling}),
                        loop=loop)


@pytest.mark.parametrize("loop", ["decode", "generate"])
@pytest.mark.parametrize("use_lora", [False, True])
def test_checkpoint_generation_config_is_ignored_recorded_logprobs_equal_a_forward_pass(hostile_path, tiny,
                                                                                        use_lora, loop):
    model, tok = load_model(str(hostile_path), trainable=use_lora, use_lora=use_lora)
    assert model.generation_config.repetition_penalty == 1.5  # the checkpoint really sets it
    r = _sample(model, tok, temperature=0.7, loop=loop)
    with torch.no_grad():
        logp, entropy = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids,
                                            r.completion_mask, temperature=0.7)
    m = r.completion_mask
    torch.testing.assert_close(r.logp[m], logp[m], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(r.entropy[m], entropy[m], atol=1e-4, rtol=1e-4)
    # the same weights without the generation_config, same seed: the very same samples (this also sees the
    # warpers transformers would run after ours, which change the samples but not the recorded log-probs)
    plain = _sample(tiny[0], tiny[1], temperature=0.7, loop=loop)
    assert torch.equal(r.completion_ids, plain.completion_ids)
    torch.testing.assert_close(r.logp, plain.logp, atol=1e-5, rtol=1e-5)


def test_sampling_runs_our_logits_processor_and_no_other(hostile_path, monkeypatch):
    model, tok = load_model(str(hostile_path), trainable=False)
    built = []
    original = model._get_logits_processor
    monkeypatch.setattr(model, "_get_logits_processor", lambda *a, **k: built.append(original(*a, **k)) or built[-1])
    _sample(model, tok, temperature=0.7, top_k=20, top_p=0.9, min_p=0.01, loop="generate")
    assert [type(p).__name__ for p in built[0]] == ["_SamplerAndRecorder"]
    _sample(model, tok, temperature=0.7, top_k=20, top_p=0.9, min_p=0.01)  # our loop: `generate` never runs
    assert len(built) == 1


def test_ignored_checkpoint_fields_are_named_once_per_model(hostile_path, tiny, capsys):
    model, tok = load_model(str(hostile_path), trainable=False)
    saved = model.generation_config
    _sample(model, tok)
    _sample(model, tok, seed=1)
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "ignoring the checkpoint's generation_config" in line]
    assert len(notes) == 1, err
    for field in ("repetition_penalty=1.5", "no_repeat_ngram_size=2", "bad_words_ids=", "min_p=0.3",
                  "forced_eos_token_id=2"):
        assert field in notes[0]
    assert "eos_token_id=2" not in notes[0].replace("forced_eos_token_id=2", "")  # token ids are kept
    assert model.generation_config is saved and saved.repetition_penalty == 1.5  # restored, unchanged
    _sample(*tiny)  # a checkpoint that sets nothing but token ids: no note
    assert "generation_config" not in capsys.readouterr().err


def test_greedy_generation_ignores_the_checkpoint_generation_config(hostile_path, tiny):
    from grpo.generate import generate_texts

    model, tok = load_model(str(hostile_path), trainable=False)
    prompts = [[{"role": "user", "content": "Count to ten."}], [{"role": "user", "content": "Hi"}]]
    hostile = generate_texts(model, tok, prompts, batch_size=2, max_new_tokens=12, greedy=True)
    plain = generate_texts(*tiny, prompts, batch_size=2, max_new_tokens=12, greedy=True)
    assert hostile == plain


def test_sampling_passes_the_kv_cache_without_a_deprecation_warning(tmp_path):
    """The shared-prompt cache went to generate and forward as `past_key_values`, deprecated in
    transformers 5.2x (removed in 5.40, where sampling would silently lose the shared prefix)."""
    import warnings

    from grpo.models import load_model
    from grpo.rollout import Sampling, encode_prompts, sample_group

    model, tok = load_model("tiny-llama", cache_dir=tmp_path, use_lora=True, lora_r=4)
    ids, mask = encode_prompts(tok, [[{"role": "user", "content": "Hi there"}]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample_group(model, tok, ids, mask, G=3, sampling=Sampling(max_new_tokens=4, temperature=1.0))
    assert not [w for w in caught if "past_key_values" in str(w.message)]

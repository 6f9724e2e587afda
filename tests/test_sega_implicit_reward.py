"""Implicit reward and preference accuracy (sega.implicit_reward): exact prompt/completion alignment under
BPE merges, batching, β invariance, and a run on tiny-llama with a PEFT adapter on the bundled pairs."""
import pytest
import torch

try:  # tests/ is a package in this tree (tests/__init__.py); plain rootdir import otherwise
    from tests.conftest import TOL
except ImportError:
    from conftest import TOL
from sega.data import load_pairs
from sega.implicit_reward import (completion_logprob_sums, format_prompt, implicit_reward, preference_accuracy,
                                  split_prompt_completion)

F32 = TOL[torch.float32]

# (prompt text, completion text) pairs whose joint tokenisation may merge across the boundary
MERGE_CANDIDATES = [("Final Ans", "wer: 25"), ("What is 40 + 2? It is 4", "2."), ("The total is 1", "25"),
                    ("x = 1", "23 apples"), ("so the answer is 12", "3 apples")]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def tiny(cache):
    from grpo.models import load_model

    return load_model("tiny-llama", cache_dir=cache, trainable=False)


def ref_completion_start(tok, ids, prompt_text):
    """Token by token: the first token whose decoded prefix is longer than the prompt text."""
    for j in range(len(ids)):
        if len(tok.decode(ids[:j + 1], clean_up_tokenization_spaces=False)) > len(prompt_text):
            return j
    raise AssertionError("no completion token")


def ref_logp_sum(model, ids, start):
    """Σ_{j ≥ start} log p(ids[j] | ids[:j]) from one unpadded forward, log-softmax in float64."""
    with torch.no_grad():
        logq = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)  # (L, V)
    return sum(logq[j - 1, ids[j]].item() for j in range(start, len(ids)))


def test_completion_alignment_is_exact_where_the_naive_last_len_slice_is_wrong(tiny):
    model, tok = tiny
    found = 0
    for q, a in MERGE_CANDIDATES:
        ids, start = split_prompt_completion(tok, q, a)
        assert tok.decode(ids, clean_up_tokenization_spaces=False) == q + a
        assert start == ref_completion_start(tok, ids, q)
        naive_start = len(ids) - len(tok(a, add_special_tokens=False)["input_ids"])  # "last len(tokens)"
        if naive_start == start:
            continue
        found += 1
        # e.g. "Final Ans" ‖ "wer: 25" → [F, inal, ' Answer', ':', ' 25']: ' Answer' straddles the
        # boundary, so the completion is 3 tokens, while "wer: 25" alone is 4 tokens and the naive
        # slice would also score the prompt token 'inal'.
        got, count = completion_logprob_sums(model, tok, [q], [a])
        expected = ref_logp_sum(model, ids, start)
        naive = ref_logp_sum(model, ids, naive_start)
        assert count.item() == len(ids) - start
        assert got.item() == pytest.approx(expected, abs=F32["atol"], rel=F32["rtol"])
        assert abs(naive - expected) > 1e-3
    assert found > 0, "no BPE merge across the boundary among the candidates: the test proves nothing"


def test_batched_left_padded_rewards_equal_one_at_a_time(tiny):
    model, tok = tiny
    rows = load_pairs("bundled", split="test")[:5]
    q = [format_prompt(tok, r["prompt"]) for r in rows] + [q for q, _ in MERGE_CANDIDATES]
    a = [r["chosen"] + tok.eos_token for r in rows] + [a for _, a in MERGE_CANDIDATES]
    batched, n_b = completion_logprob_sums(model, tok, q, a, batch_size=len(q))
    single, n_s = completion_logprob_sums(model, tok, q, a, batch_size=1)
    assert torch.equal(n_b, n_s)
    torch.testing.assert_close(batched, single, **F32)
    for i in range(len(q)):  # and each equals the unpadded token-by-token reference
        ids, start = split_prompt_completion(tok, q[i], a[i])
        assert batched[i].item() == pytest.approx(ref_logp_sum(model, ids, start), abs=1e-4, rel=F32["rtol"])


def test_prompt_goes_through_the_chat_template_and_completion_ends_with_eos(tiny):
    _, tok = tiny
    text = format_prompt(tok, "What is 2 + 2?")
    assert text.endswith("<|im_start|>assistant\n") and "What is 2 + 2?" in text
    ids, start = split_prompt_completion(tok, text, "4" + tok.eos_token)
    assert ids[-1] == tok.eos_token_id and tok.decode(ids[start:]) == "4" + tok.eos_token


def test_positive_beta_never_changes_the_ranking(tiny):
    model, tok = tiny
    rows = load_pairs("bundled", split="test")[:4]
    results = [preference_accuracy(model, tok, rows, beta=beta, batch_size=4) for beta in (1e-30, 1.0, 50.0)]
    for r in results[1:]:
        for key in ("accuracy", "ties", "accuracy_length_normalized", "ties_length_normalized"):
            assert r[key] == results[0][key]
    x = torch.tensor([-3.0, -1.0, -2.0])
    assert torch.equal(implicit_reward(x, beta=2.0).argsort(), x.argsort())
    with pytest.raises(AssertionError, match="beta"):
        preference_accuracy(model, tok, rows, beta=0.0)


def test_preference_accuracy_runs_on_a_peft_adapter_over_the_bundled_pairs(tiny, cache, tmp_path):
    from grpo.models import load_model

    base, _ = load_model("tiny-llama", cache_dir=cache, use_lora=True, lora_r=4, lora_alpha=8)
    with torch.no_grad():  # make the adapter do something: a fresh LoRA is the identity (B = 0)
        for name, p in base.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    base.save_pretrained(tmp_path / "adapter")
    model, tok = load_model(str(tmp_path / "adapter"), cache_dir=cache, trainable=False)
    assert hasattr(model, "disable_adapter")
    rows = load_pairs("bundled", split="test")
    out = preference_accuracy(model, tok, rows, beta=0.5, batch_size=16)
    assert out["n"] == len(rows) == 48 and out["beta"] == 0.5
    for key in ("accuracy", "ties", "accuracy_length_normalized", "ties_length_normalized"):
        assert 0.0 <= out[key] <= 1.0
    assert out["accuracy"] + out["ties"] <= 1.0
    assert out["margin_mean"] == pytest.approx(out["reward_chosen_mean"] - out["reward_rejected_mean"], abs=1e-4)
    with model.disable_adapter():  # the adapter changes the rewards: the adapter is what was evaluated
        plain = preference_accuracy(model, tok, rows[:4], beta=0.5)
    assert plain["reward_chosen_mean"] != preference_accuracy(model, tok, rows[:4], beta=0.5)["reward_chosen_mean"]

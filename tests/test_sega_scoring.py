"""Eq. 1 (sega.scoring): float64 references for spans, top-m rounding and the score; nothing outside the
completion is read."""
import math
from fractions import Fraction

import pytest
import torch

try:  # tests/ is a package in this tree (tests/__init__.py); plain rootdir import otherwise
    from tests.conftest import TOL
except ImportError:
    from conftest import TOL
from sega.scoring import entropy_score, marker_final_start, score_completions, span_masks

F32 = TOL[torch.float32]


# ----------------------------------------------------------------------------- longhand references
def ref_n_final(n, final_frac=None, final_window=None):
    """Number of final-span tokens without a marker, in exact rational arithmetic."""
    if n == 0:
        return 0
    if final_window is not None:
        return min(final_window, n)
    return min(max(1, math.ceil(Fraction(str(final_frac)) * n)), n)


def ref_top_m_count(n_r, top_m):
    if n_r == 0:
        return 0
    if top_m < 1:
        return max(1, math.floor(Fraction(str(top_m)) * n_r))
    return min(int(top_m), n_r)


def ref_score(h, reasoning_len, n, lam, top_m):
    """S = −mean(h[reasoning_len:n]) + λ·mean(top-m of h[:reasoning_len]), floats in, float out."""
    final = h[reasoning_len:n]
    h_final = sum(final) / len(final) if final else 0.0
    m = ref_top_m_count(reasoning_len, top_m)
    fork = sum(sorted(h[:reasoning_len], reverse=True)[:m]) / m if m else 0.0
    return -h_final + lam * fork, h_final, fork


def prefix_mask(lengths, T):
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # (N, T)


# ----------------------------------------------------------------------------- spans and score
@pytest.mark.parametrize("final_frac", [0.2, 0.25, 1.0])
@pytest.mark.parametrize("top_m", [0.1, 0.3, 0.5, 1, 3])
@pytest.mark.parametrize("lam", [1.0, 0.4])
def test_fraction_span_score_matches_float64_reference(final_frac, top_m, lam):
    lengths = [0, 1, 2, 3, 7, 10, 15, 23, 30, 40]  # ragged, incl. empty and 1-token completions
    T = 41
    entropy = torch.rand(len(lengths), T, dtype=torch.float64) * 5  # (N, T)
    mask = prefix_mask(lengths, T)
    final_mask, reasoning_mask = span_masks(mask, final_frac=final_frac)
    out = entropy_score(entropy, final_mask, reasoning_mask, lambda_fork=lam, top_m=top_m)
    for i, n in enumerate(lengths):
        r = n - ref_n_final(n, final_frac=final_frac)
        assert reasoning_mask[i].sum() == r and final_mask[i].sum() == n - r
        s, hf, fork = ref_score(entropy[i].tolist(), r, n, lam, top_m)
        # the top-m kernel returns fp32 whatever the input dtype: fp32 tolerance for the fork term
        assert out.score[i].item() == pytest.approx(s, abs=F32["atol"], rel=F32["rtol"])
        assert out.h_final[i].item() == pytest.approx(hf, abs=TOL[torch.float64]["atol"], rel=1e-9)
        assert out.fork_entropy[i].item() == pytest.approx(fork, abs=F32["atol"], rel=F32["rtol"])
        assert out.fork_mask[i].sum() == ref_top_m_count(r, top_m)


@pytest.mark.parametrize("window", [1, 4, 100])
def test_final_window_span_takes_the_last_w_tokens_clamped_to_the_length(window):
    lengths = [1, 3, 4, 9, 20]
    mask = prefix_mask(lengths, 20)
    final_mask, reasoning_mask = span_masks(mask, final_frac=0.2, final_window=window)  # window wins
    for i, n in enumerate(lengths):
        w = ref_n_final(n, final_window=window)
        assert final_mask[i].nonzero().flatten().tolist() == list(range(n - w, n))
        assert reasoning_mask[i].nonzero().flatten().tolist() == list(range(n - w))


def test_fraction_span_is_exact_despite_float_representation_error():
    # 0.28 · 25 = 7.000000000000001 in float64: a plain ceil would give 8 final tokens, the fraction is 7.
    assert 0.28 * 25 > 7
    final_mask, reasoning_mask = span_masks(prefix_mask([25], 25), final_frac=0.28)
    assert final_mask.sum() == 7 and reasoning_mask.sum() == 18


def test_top_m_fraction_is_exact_despite_float_representation_error():
    # 0.7 · 90 = 62.99999999999999 in float64: a plain floor would select 62 tokens, the fraction is 63.
    assert 0.7 * 90 < 63
    h = torch.rand(1, 91, dtype=torch.float64)
    final_mask, reasoning_mask = span_masks(prefix_mask([91], 91), final_window=1)  # 90 reasoning tokens
    out = entropy_score(h, final_mask, reasoning_mask, lambda_fork=1.0, top_m=0.7)
    assert out.fork_mask.sum() == ref_top_m_count(90, 0.7) == 63


def test_spans_are_disjoint_and_cover_exactly_the_completion():
    lengths = [0, 1, 5, 12]
    mask = prefix_mask(lengths, 16)
    start = torch.tensor([-1, -1, 2, 11])  # markers in rows 2 and 3
    final_mask, reasoning_mask = span_masks(mask, start)
    assert not (final_mask & reasoning_mask).any()
    assert torch.equal(final_mask | reasoning_mask, mask)
    assert final_mask[2].nonzero().flatten().tolist() == [2, 3, 4]
    assert final_mask[3].nonzero().flatten().tolist() == [11]


def test_hand_worked_score():
    # completion of n = 6 tokens, final_frac 0.2 → ⌈1.2⌉ = 2 final tokens, reasoning = first 4.
    # H = [0.5, 2.0, 1.0, 3.0 | 0.2, 0.4]
    # H_final = (0.2 + 0.4) / 2 = 0.3
    # top_m = 0.5 → m = max(1, ⌊0.5·4⌋) = 2 → top-2 of reasoning {3.0, 2.0} → mean 2.5
    # S = −0.3 + 0.4 · 2.5 = 0.7
    h = torch.tensor([[0.5, 2.0, 1.0, 3.0, 0.2, 0.4, 9.9]], dtype=torch.float64)  # 9.9: padding
    final_mask, reasoning_mask = span_masks(prefix_mask([6], 7), final_frac=0.2)
    out = entropy_score(h, final_mask, reasoning_mask, lambda_fork=0.4, top_m=0.5)
    assert out.h_final.item() == pytest.approx(0.3)
    assert out.fork_entropy.item() == pytest.approx(2.5)
    assert out.score.item() == pytest.approx(0.7)
    assert out.fork_mask[0].nonzero().flatten().tolist() == [1, 3]


def test_top_m_count_larger_than_the_reasoning_span_takes_all_of_it():
    h = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    final_mask, reasoning_mask = span_masks(prefix_mask([4], 4), final_window=1)
    out = entropy_score(h, final_mask, reasoning_mask, lambda_fork=1.0, top_m=10)
    assert out.fork_entropy.item() == pytest.approx(2.0)  # mean of all 3 reasoning entropies


def test_entropy_outside_the_completion_mask_is_never_read():
    lengths = [3, 8, 1, 0]
    T = 10
    mask = prefix_mask(lengths, T)
    entropy = torch.rand(4, T) * 3
    garbage = entropy.masked_fill(~mask, float("nan"))
    garbage[0, 5] = float("inf")
    final_mask, reasoning_mask = span_masks(mask, final_frac=0.25)
    a = entropy_score(entropy.masked_fill(~mask, 0.0), final_mask, reasoning_mask, lambda_fork=1.0, top_m=0.5)
    b = entropy_score(garbage, final_mask, reasoning_mask, lambda_fork=1.0, top_m=0.5)
    assert torch.equal(a.score, b.score) and torch.isfinite(b.score).all()
    assert b.score[3] == 0.0  # empty completion scores 0


# ----------------------------------------------------------------------------- markers (real BPE tokenizer)
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from grpo.models import load_model

    return load_model("tiny-llama", cache_dir=tmp_path_factory.mktemp("models"), trainable=False)


def ref_final_start(tok, ids, markers):
    """Linear scan: first token whose decoded prefix reaches past the end of the last marker."""
    text = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    ends = [text.rfind(m) + len(m) for m in markers if m in text]
    if not ends or max(ends) >= len(text):
        return -1
    for j in range(len(ids)):
        if len(tok.decode(ids[:j + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)) > max(ends):
            return j
    raise AssertionError("unreachable")


def encode_rows(tok, texts, T):
    rows = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    lengths = [len(r) for r in rows]
    ids = torch.tensor([r + [tok.pad_token_id] * (T - len(r)) for r in rows])  # (N, T)
    return ids, prefix_mask(lengths, T), lengths


MARKER_TEXTS = [
    "Step 1: 3 + 4 = 7.\nFinal Answer: 7",
    "Final Answer: 5 is wrong. Step 2: 2 * 3 = 6. Final Answer: 6",  # the last marker counts
    "so 12 + 30 = 42 #### 42",
    "<answer>42</answer>",
    "no marker here, just 12 apples",
    "Final Answer:",  # nothing after the marker but the EOS token
]


def test_marker_span_starts_at_the_first_token_after_the_last_marker(tiny):
    _, tok = tiny
    markers = ("Final Answer:", "####", "<answer>")
    ids, mask, lengths = encode_rows(tok, MARKER_TEXTS, 40)
    starts = marker_final_start(tok, ids, mask, markers=markers)
    expected = [ref_final_start(tok, ids[i, :n].tolist(), markers) for i, n in enumerate(lengths)]
    assert starts.tolist() == expected
    assert expected[4] == -1
    assert expected[5] == lengths[5] - 1  # "Final Answer:" then EOS: the final span is the EOS token
    text_after = tok.decode(ids[0, expected[0]:lengths[0]].tolist())
    assert text_after.strip().startswith("7")


def test_marker_span_score_matches_float64_reference(tiny):
    _, tok = tiny
    ids, mask, lengths = encode_rows(tok, MARKER_TEXTS, 40)
    entropy = torch.rand(ids.shape, dtype=torch.float64) * 4
    starts = marker_final_start(tok, ids, mask)  # default markers
    final_mask, reasoning_mask = span_masks(mask, starts, final_frac=0.2)
    out = entropy_score(entropy, final_mask, reasoning_mask, lambda_fork=0.4, top_m=0.3)
    for i, n in enumerate(lengths):
        start = ref_final_start(tok, ids[i, :n].tolist(), ("Final Answer:", "<answer>", "####", "<SOLUTION>"))
        r = start if start >= 0 else n - ref_n_final(n, final_frac=0.2)
        s, _, _ = ref_score(entropy[i].tolist(), r, n, 0.4, 0.3)
        assert out.score[i].item() == pytest.approx(s, abs=F32["atol"], rel=F32["rtol"])


# ----------------------------------------------------------------------------- end to end on a model
def ref_model_scores(model, prompts, completions, lam, top_m, final_frac):
    """Unpadded single-sequence forward, entropies longhand in float64, fraction spans."""
    out = []
    for p, c in zip(prompts, completions):
        ids = torch.tensor([p + c])
        logits = model(ids).logits[0].double()[len(p) - 1:-1]  # (n, V): position P−1+t predicts token t
        logq = logits.log_softmax(-1)
        h = (-(logq.exp() * logq).sum(-1)).tolist()
        n = len(c)
        out.append(ref_score(h, n - ref_n_final(n, final_frac=final_frac), n, lam, top_m)[0])
    return torch.tensor(out, dtype=torch.float64)


def test_score_completions_matches_reference_and_never_reads_padding_or_post_eos_tokens(tiny):
    model, tok = tiny
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    completions = [[20, 21, 22, 23, tok.eos_token_id], [30, 31, tok.eos_token_id], [40, 41, 42, 43, 44, 45, 46]]
    P, T = 5, 8
    prompt_ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[False] * (P - len(p)) + [True] * len(p) for p in prompts])
    completion_ids = torch.tensor([c + [tok.pad_token_id] * (T - len(c)) for c in completions])
    completion_mask = prefix_mask([len(c) for c in completions], T)
    kw = dict(markers=(), final_frac=0.25, top_m=0.5, lambda_fork=0.4)
    clean = score_completions(model, tok, prompt_ids, prompt_mask, completion_ids, completion_mask, **kw)
    # ids far outside the vocabulary crash an embedding lookup: if they were read, this would raise
    big = 10 ** 6
    dirty = score_completions(model, tok, prompt_ids.masked_fill(~prompt_mask, big), prompt_mask,
                              completion_ids.masked_fill(~completion_mask, big), completion_mask, **kw)
    assert torch.equal(clean.score, dirty.score)
    ref = ref_model_scores(model, prompts, completions, 0.4, 0.5, 0.25)
    torch.testing.assert_close(clean.score.double(), ref.double(), **F32)

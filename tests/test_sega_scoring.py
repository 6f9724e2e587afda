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
from sega.scoring import entropy_score, marker_final_start, score_completions, score_mask, span_masks

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
def ref_model_scores(model, prompts, completions, lam, top_m, final_frac, eos=None):
    """Unpadded single-sequence forward, entropies longhand in float64, fraction spans; a final `eos`
    token (None: keep it) is left out of both spans."""
    out = []
    for p, c in zip(prompts, completions):
        ids = torch.tensor([p + c])
        logits = model(ids).logits[0].double()[len(p) - 1:-1]  # (n, V): position P−1+t predicts token t
        logq = logits.log_softmax(-1)
        h = (-(logq.exp() * logq).sum(-1)).tolist()
        n = len(c) - (eos is not None and c[-1] == eos)
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
    for include_eos in (False, True):  # the last row has no EOS (truncated): the option changes nothing there
        kw = dict(markers=(), final_frac=0.25, top_m=0.5, lambda_fork=0.4, include_eos=include_eos)
        clean = score_completions(model, tok, prompt_ids, prompt_mask, completion_ids, completion_mask, **kw)
        # ids far outside the vocabulary crash an embedding lookup: if they were read, this would raise
        big = 10 ** 6
        dirty = score_completions(model, tok, prompt_ids.masked_fill(~prompt_mask, big), prompt_mask,
                                  completion_ids.masked_fill(~completion_mask, big), completion_mask, **kw)
        assert torch.equal(clean.score, dirty.score)
        ref = ref_model_scores(model, prompts, completions, 0.4, 0.5, 0.25,
                               eos=None if include_eos else tok.eos_token_id)
        torch.testing.assert_close(clean.score.double(), ref.double(), **F32)


# ----------------------------------------------------------------------------- the final EOS token [D8]
def test_score_mask_drops_only_a_final_eos_token():
    ids = torch.tensor([[5, 6, 2, 0], [5, 6, 7, 8], [2, 0, 0, 0], [0, 0, 0, 0], [5, 2, 0, 0]])
    mask = prefix_mask([3, 4, 1, 0, 1], 4)  # row 4 ends at a stop string before its EOS
    assert score_mask(ids, mask, eos_ids=[2]).int().tolist() == [
        [1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    assert torch.equal(score_mask(ids, mask, eos_ids=[2], include_eos=True), mask)


def test_hand_worked_score_leaves_the_final_eos_out_by_default():
    # 6 completion tokens, the last the EOS; H = [0.5, 2.0, 1.0, 3.0, 0.2 | EOS 4.0]; λ = 0.4, top_m = 0.5,
    # final_frac = 0.2.
    # default, EOS left out: n = 5 → ⌈0.2·5⌉ = 1 final token {0.2} → H_final = 0.2;
    #   reasoning = first 4, m = ⌊0.5·4⌋ = 2 → top-2 {3.0, 2.0} → 2.5;  S = −0.2 + 0.4·2.5 = 0.8
    # include_eos: n = 6 → ⌈0.2·6⌉ = ⌈1.2⌉ = 2 final tokens {0.2, 4.0} → H_final = 2.1 (the entropy of
    #   stopping dominates); reasoning = first 4 as before → 2.5;  S = −2.1 + 0.4·2.5 = −1.1
    eos = 2
    ids = torch.tensor([[11, 12, 13, 14, 15, eos, 0]])
    h = torch.tensor([[0.5, 2.0, 1.0, 3.0, 0.2, 4.0, 9.9]], dtype=torch.float64)  # 9.9: padding
    mask = prefix_mask([6], 7)
    expected = {False: (0.2, 2.5, 0.8, [4]), True: (2.1, 2.5, -1.1, [4, 5])}
    for include_eos, (h_final, fork, score, final_tokens) in expected.items():
        scored = score_mask(ids, mask, eos_ids=[eos], include_eos=include_eos)
        final_mask, reasoning_mask = span_masks(scored, final_frac=0.2)
        out = entropy_score(h, final_mask, reasoning_mask, lambda_fork=0.4, top_m=0.5)
        assert final_mask[0].nonzero().flatten().tolist() == final_tokens
        assert out.h_final.item() == pytest.approx(h_final)
        assert out.fork_entropy.item() == pytest.approx(fork)
        assert out.score.item() == pytest.approx(score)


def test_a_marker_right_before_eos_does_not_score_the_entropy_of_stopping(tiny):
    from grpo.policy import completion_logprobs

    model, tok = tiny
    texts = ["Step 1: 3 + 4 = 7.\nFinal Answer: 7", "Step 1: 3 + 4 = 7.\nFinal Answer:"]
    completion_ids, completion_mask, lengths = encode_rows(tok, texts, 24)
    prompt_ids, prompt_mask = torch.tensor([[5, 6, 7]] * 2), torch.ones(2, 3, dtype=torch.bool)
    kw = dict(final_frac=0.2, top_m=0.5, lambda_fork=0.4)
    default = score_completions(model, tok, prompt_ids, prompt_mask, completion_ids, completion_mask, **kw)
    with_eos = score_completions(model, tok, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                 include_eos=True, **kw)
    n0, n1 = lengths
    answer = marker_final_start(tok, completion_ids[:1], completion_mask[:1]).item()
    # row 0: the answer " 7" without / with the EOS
    assert default.final_mask[0].nonzero().flatten().tolist() == list(range(answer, n0 - 1))
    assert with_eos.final_mask[0].nonzero().flatten().tolist() == list(range(answer, n0))
    # row 1: "Final Answer:" then EOS. With the EOS the final span is the EOS alone, H_final = the entropy of
    # stopping; without it nothing follows the marker, so the fraction span of the n − 1 text tokens is used
    assert with_eos.final_mask[1].nonzero().flatten().tolist() == [n1 - 1]
    k = ref_n_final(n1 - 1, final_frac=0.2)
    assert default.final_mask[1].nonzero().flatten().tolist() == list(range(n1 - 1 - k, n1 - 1))
    _, entropy = completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask)  # T = 1
    assert with_eos.h_final[1].item() == pytest.approx(entropy[1, n1 - 1].item(), rel=1e-5)
    assert default.h_final[1].item() == pytest.approx(entropy[1, n1 - 1 - k:n1 - 1].mean().item(), rel=1e-5)


def test_sega_trainer_passes_score_include_eos_to_the_score(tmp_path, monkeypatch):
    from grpo.models import load_model
    from grpo.optim import make_optimizer, make_scheduler
    from sega import trainer as sega_trainer
    from sega.data import load_pairs
    from sega.settings import SegaSettings

    assert SegaSettings().score_include_eos is False  # default: the EOS token is not scored

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["include_eos"])
        return score_completions(*args, **kwargs)

    monkeypatch.setattr(sega_trainer, "score_completions", spy)
    model, tok = load_model("tiny-llama", cache_dir=tmp_path, use_lora=False)
    for include_eos in (False, True):
        cfg = SegaSettings(model="tiny-llama", use_lora=False, k=2, batch_size=1, gen_max_new_tokens=4,
                           score_include_eos=include_eos)
        opt = make_optimizer(list(model.parameters()), name="adamw", lr=1e-3, weight_decay=0.0)
        sched = make_scheduler(opt, kind="constant", warmup_steps=0, total_steps=1)
        trainer = sega_trainer.SegaTrainer(cfg, model, tok, load_pairs("bundled", "train", limit=2), opt, sched)
        trainer.collect()
        assert seen[-1] is include_eos

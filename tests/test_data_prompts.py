"""max_prompt_length (issue #14 item 8): its default from the model's positions, left truncation of the
encoded batch, rejection of rows before training, and the counts of both."""
import json
from types import SimpleNamespace

import pytest
import torch

from grpo.config import UserError
from grpo.data import load_gsm8k, to_working_out_prompts
from grpo.data.prompts import (fit_rows, model_positions, prompt_lengths, resolve_max_prompt_length,
                               truncate_prompts_left)
from grpo.models import load_tokenizer
from grpo.rollout import encode_prompts


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer("tiny-llama", cache_dir=tmp_path_factory.mktemp("model-cache"))


# ------------------------------------------------------------------------------------- the limit
def test_the_default_is_the_models_positions_minus_the_completion_length():
    llama = SimpleNamespace(max_position_embeddings=1024)
    assert resolve_max_prompt_length(None, llama, max_new_tokens=64) == 960  # 1024 − 64
    assert resolve_max_prompt_length(300, llama, max_new_tokens=64) == 300  # an explicit value wins
    gpt2 = SimpleNamespace(n_positions=512)
    assert resolve_max_prompt_length(None, gpt2, max_new_tokens=12) == 500
    nested = SimpleNamespace(text_config=SimpleNamespace(max_position_embeddings=4096))
    assert model_positions(nested) == 4096
    assert resolve_max_prompt_length(None, SimpleNamespace(), max_new_tokens=64) is None  # no limit known


@pytest.mark.parametrize("explicit, max_new_tokens, message", [
    (0, 64, "max_prompt_length must be >= 1"),
    (None, 1024, "max_new_tokens=1024 leaves no room for a prompt in the model's 1024 positions"),
])
def test_a_limit_that_leaves_no_room_for_a_prompt_is_an_error(explicit, max_new_tokens, message):
    with pytest.raises(UserError, match=message):
        resolve_max_prompt_length(explicit, SimpleNamespace(max_position_embeddings=1024),
                                  max_new_tokens=max_new_tokens)


# ------------------------------------------------------------------------------------- truncation
def test_left_truncation_keeps_the_last_tokens_of_each_left_padded_row_hand_worked():
    pad = 0
    ids = torch.tensor([[pad, pad, 5, 6, 7],     # 3 tokens: fits in 4
                        [1, 2, 3, 4, 5]])        # 5 tokens: loses its first one
    mask = ids != pad
    got_ids, got_mask, truncated = truncate_prompts_left(ids, mask, max_prompt_length=4)
    assert got_ids.tolist() == [[pad, 5, 6, 7], [2, 3, 4, 5]]
    assert got_mask.tolist() == [[False, True, True, True], [True, True, True, True]]
    assert truncated.tolist() == [False, True]


def test_left_truncation_equals_a_longhand_per_row_reference():
    g = torch.Generator().manual_seed(0)
    lengths = [1, 7, 13, 13, 2]
    P, P_max = max(lengths), 6
    ids = torch.zeros(len(lengths), P, dtype=torch.long)
    for i, n in enumerate(lengths):  # left padded
        ids[i, P - n:] = torch.randint(1, 100, (n,), generator=g)
    mask = ids != 0
    got_ids, got_mask, truncated = truncate_prompts_left(ids, mask, max_prompt_length=P_max)
    assert got_ids.shape == (len(lengths), P_max)
    for i, n in enumerate(lengths):
        tokens = ids[i, P - n:].tolist()
        kept = tokens[-P_max:]  # the end of the prompt survives
        assert got_ids[i][got_mask[i]].tolist() == kept
        assert bool(truncated[i]) == (n > P_max)


def test_prompts_within_the_limit_or_without_one_are_unchanged():
    ids = torch.tensor([[0, 3, 4], [5, 6, 7]])
    mask = ids != 0
    for limit in (3, 10, None):
        got_ids, got_mask, truncated = truncate_prompts_left(ids, mask, max_prompt_length=limit)
        assert got_ids is ids and got_mask is mask and not truncated.any()


# ------------------------------------------------------------------------------------- lengths and rows
def test_prompt_lengths_equal_what_the_sampler_encodes(tok):
    rows = to_working_out_prompts(load_gsm8k("arithmetic", "train", 5))
    prompts = [r["prompt"] for r in rows] + ["a raw text prompt"]
    suffixes = [r["prompt_suffix"] for r in rows] + [""]
    lengths = prompt_lengths(tok, prompts, suffixes)
    _, mask = encode_prompts(tok, prompts[:5], generation_suffix=suffixes[0])
    assert lengths[:5] == mask.sum(-1).tolist()
    assert lengths[5] == encode_prompts(tok, prompts[5:])[1].sum().item()


def test_reject_drops_the_long_rows_and_counts_them():
    rows = [{"i": i} for i in range(5)]
    fit = fit_rows(rows, [10, 50, 10, 99, 20], max_prompt_length=20, overflow="reject")
    assert fit.rows == [{"i": 0}, {"i": 2}, {"i": 4}]  # 20 tokens fit in 20
    assert fit.too_long == [1, 3] and fit.longest == 99
    assert fit.note(5) == ("note: 2 of 5 prompts are longer than max_prompt_length=20 tokens (longest 99): "
                           "rejected (dropped); rows 1, 3")


def test_truncate_left_keeps_every_row_and_counts_the_long_ones():
    rows = [{"i": i} for i in range(3)]
    fit = fit_rows(rows, [10, 50, 10], max_prompt_length=20, overflow="truncate_left")
    assert fit.rows == rows and fit.too_long == [1]
    assert "1 of 3 prompts" in fit.note(3) and "truncated from the left when sampled" in fit.note(3)
    assert fit_rows(rows, [10, 50, 10], max_prompt_length=None, overflow="reject").note(3) == ""


def test_rejecting_every_row_or_an_unknown_mode_is_an_error():
    with pytest.raises(UserError, match="every one of the 2 prompts is longer than max_prompt_length=5"):
        fit_rows([{}, {}], [6, 7], max_prompt_length=5, overflow="reject")
    with pytest.raises(UserError, match="prompt_overflow must be one of truncate_left, reject, got 'right'"):
        fit_rows([{}], [1], max_prompt_length=5, overflow="right")


def test_a_100_kb_question_is_rejected_or_reaches_the_model_as_max_prompt_length_tokens(tok, tmp_path):
    # issue #14 item 8: on the 1,024-position tiny-llama this question ran for 34 s in 1.65 GB
    f = tmp_path / "train.jsonl"
    long_q = "Tom has 3 apples and buys 4 more. " * 3_000  # 102 KB
    f.write_text("\n".join(json.dumps({"question": q, "answer": "3 + 4 = 7\n#### 7"})
                           for q in ("How many?", long_q, "And now?")) + "\n")
    rows = to_working_out_prompts(load_gsm8k(f))
    P_max = resolve_max_prompt_length(None, SimpleNamespace(max_position_embeddings=1024), max_new_tokens=64)
    lengths = prompt_lengths(tok, [r["prompt"] for r in rows], [r["prompt_suffix"] for r in rows])
    assert lengths[1] > 10 * P_max > 10 * max(lengths[0], lengths[2])

    fit = fit_rows(rows, lengths, max_prompt_length=P_max, overflow="reject")
    assert [r["question"] for r in fit.rows] == ["How many?", "And now?"] and fit.too_long == [1]

    ids, mask = encode_prompts(tok, [r["prompt"] for r in rows], generation_suffix=rows[0]["prompt_suffix"])
    ids, mask, truncated = truncate_prompts_left(ids, mask, max_prompt_length=P_max)
    assert ids.shape == (3, P_max) and truncated.tolist() == [False, True, False]
    assert tok.decode(ids[1][mask[1]]).endswith("4 more. <|im_end|>\n<|im_start|>assistant\n<start_working_out>")


def test_train_grpo_on_a_100_kb_question_truncates_it_or_rejects_its_row(tmp_path):
    """The script end to end: before, the question reached the 1,024-position model whole (34 s, 1.65 GB)."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    f = tmp_path / "train.jsonl"
    long_q = "Tom has 3 apples and buys 4 more. " * 3_000  # 102 KB
    f.write_text("\n".join(json.dumps({"question": q, "answer": "3 + 4 = 7\n#### 7"})
                           for q in ("How many?", long_q, "And now?")) + "\n")
    env = dict(os.environ, GRPO_OUTPUT_ROOT=str(tmp_path / "out"), OMP_NUM_THREADS="1", PYTHONPATH=str(root),
               GRPO_CACHE_DIR=os.environ.get("GRPO_TEST_CACHE", str(tmp_path / "cache")))
    base = [sys.executable, str(root / "scripts" / "train_grpo.py"), "--model", "tiny-llama", "--task", "gsm8k",
            "--dataset", str(f), "--prompts-per-step", "3", "--num-generations", "2", "--max-completion-length",
            "8", "--max-steps", "1"]
    t0 = time.perf_counter()
    cut = subprocess.run([*base, "--run-name", "cut"], env=env, capture_output=True, text=True, timeout=600)
    assert cut.returncode == 0, cut.stderr[-3000:]
    assert "1 of 3 prompts are longer than max_prompt_length=1016" in cut.stderr
    assert time.perf_counter() - t0 < 60
    row = json.loads((tmp_path / "out" / "cut" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["prompts/truncated"] == 1.0
    drop = subprocess.run([*base, "--run-name", "drop", "--prompt-overflow", "reject", "--prompts-per-step", "2"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert drop.returncode == 0 and "rejected (dropped); rows 1" in drop.stderr, drop.stderr[-3000:]
    row = json.loads((tmp_path / "out" / "drop" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["prompts/truncated"] == 0.0


def test_evaluation_keeps_the_last_max_prompt_length_tokens_of_a_long_prompt(tmp_path, monkeypatch):
    import grpo.generate
    from grpo.generate import generate_texts
    from grpo.models import load_model

    model, tok = load_model("tiny-llama", cache_dir=tmp_path, trainable=False)
    seen = []
    original = grpo.generate.sample_group
    monkeypatch.setattr(grpo.generate, "sample_group", lambda m, t, ids, mask, **kw: (seen.append(ids.shape[1]),
                                                                                      original(m, t, ids, mask, **kw))[1])
    long_q = "Tom has 3 apples and buys 4 more. " * 400
    out = generate_texts(model, tok, [[{"role": "user", "content": q}] for q in ("Hi", long_q)], batch_size=2,
                         max_new_tokens=4, max_prompt_length=50)
    assert seen == [50] and len(out.texts) == 2
    generate_texts(model, tok, [[{"role": "user", "content": long_q}]], batch_size=1, max_new_tokens=24)
    assert seen[-1] == 1024 - 24  # the default: the model's positions − max_new_tokens

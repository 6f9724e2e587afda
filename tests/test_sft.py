"""SFT (grpo/sft.py): label masking, the token-mean loss against a float64 longhand reference,
gradient accumulation, padding invariance, a learning test, and sectioned settings files."""
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from grpo.config import ConfigError, parse_settings, settings_from_dict
from grpo.data import load_gsm8k, to_working_out_prompts
from grpo.models import load_model
from grpo.run import RunDir, read_metrics
from grpo.sft import (IGNORE, SFTExample, SFTLoopSettings, chat_prompt_text, collate, encode_example,
                      sft_loss, step_batches, train_sft)

try:  # tests/ may or may not be a package
    from tests.conftest import TOL
except ImportError:
    from conftest import TOL


@pytest.fixture(autouse=True)
def _one_thread():
    # The tiny model is far faster on one thread than on two threads shared with other processes.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def tok(cache):
    return load_model("tiny-llama", cache_dir=cache, trainable=False)[1]


def _gsm8k_texts(tok, n):
    rows = to_working_out_prompts(load_gsm8k("arithmetic", "train", n))
    return [(chat_prompt_text(tok, r["prompt"], r["prompt_suffix"]), r["sft_completion"]) for r in rows]


# ------------------------------------------------------------------------------------- tokenisation
def test_labels_are_exactly_the_completion_tokens_then_eos(tok):
    prompt, completion = _gsm8k_texts(tok, 1)[0]
    e = encode_example(tok, prompt, completion, max_length=1024)
    joint = tok(prompt + completion, add_special_tokens=False)["input_ids"]
    assert e.input_ids == joint + [tok.eos_token_id]  # jointly tokenised, EOS appended as an id
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])  # this boundary does not merge
    assert e.labels[:n_prompt] == [IGNORE] * n_prompt
    assert e.labels[n_prompt:] == e.input_ids[n_prompt:]
    assert tok.decode(e.labels[n_prompt:]) == completion + tok.eos_token
    assert prompt.endswith("<start_working_out>") and e.num_tokens == len(e.input_ids) - n_prompt


def test_token_straddling_the_prompt_boundary_is_a_target_predicted_from_the_prompt(tok):
    # BPE merges "the " + "apples" into "the", " apples": the joint ids are kept (a separate encoding
    # would make up "the", " ", "a", "pples"), and " apples", the first token carrying completion text,
    # is the first target, as in sega.implicit_reward.
    prompt, completion = "count the ", "apples"
    e = encode_example(tok, prompt, completion, max_length=64)
    assert e.input_ids[:-1] == tok(prompt + completion, add_special_tokens=False)["input_ids"]
    assert tok.decode(e.input_ids[-2:-1]) == " apples"
    assert e.labels == [IGNORE] * (len(e.input_ids) - 2) + e.input_ids[-2:]


def test_long_examples_lose_the_end_of_the_completion_and_prompt_only_ones_are_dropped(tok):
    prompt, completion = _gsm8k_texts(tok, 1)[0]
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    e = encode_example(tok, prompt, completion, max_length=n_prompt + 3)
    assert len(e.input_ids) == n_prompt + 3 and e.num_tokens == 3
    full = encode_example(tok, prompt, completion, max_length=1024)
    assert e.input_ids == full.input_ids[:n_prompt + 3]
    assert encode_example(tok, prompt, completion, max_length=n_prompt) is None


def test_collate_pads_on_the_right_with_ignored_labels_and_a_false_mask():
    a, b = SFTExample([5, 6, 7], [IGNORE, 6, 7]), SFTExample([8], [8])
    batch = collate([a, b], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].dtype == torch.bool
    assert batch["attention_mask"].tolist() == [[True, True, True], [True, False, False]]


# ------------------------------------------------------------------------------------- the loss
def _reference_loss(logits, labels):
    """Longhand float64: mean over labelled t ≥ 1 of logsumexp(z[t−1]) − z[t−1][label[t]]."""
    total, count = 0.0, 0
    z, y = logits.double().tolist(), labels.tolist()
    for b in range(len(y)):
        for t in range(1, len(y[b])):
            if y[b][t] == IGNORE:
                continue
            row = z[b][t - 1]
            m = max(row)
            total += m + math.log(sum(math.exp(v - m) for v in row)) - row[y[b][t]]
            count += 1
    return total / count, count


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sft_loss_matches_a_float64_longhand_reference(dtype):
    logits = torch.randn(3, 7, 123).to(dtype)  # odd vocabulary size, B = 3, ragged labels
    labels = torch.randint(0, 123, (3, 7))
    labels[0, :3] = IGNORE  # prompt
    labels[1, 5:] = IGNORE  # padding
    labels[2, :1] = IGNORE
    loss, stats = sft_loss(logits, labels)
    ref, count = _reference_loss(logits, labels)
    assert stats.num_tokens == count
    torch.testing.assert_close(loss.double(), torch.tensor(ref, dtype=torch.float64), **TOL[dtype])


def test_hand_worked_example():
    # One labelled token (position 1) predicted from position 0, whose logits over V = 2 are (0, ln 3):
    # p(token 1) = 3/4, so the loss is −ln(3/4) = 0.28768…; position 1's logits predict nothing.
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, -5.0]]])
    loss, stats = sft_loss(logits, torch.tensor([[IGNORE, 1]]))
    assert loss.item() == pytest.approx(-math.log(0.75), abs=1e-6)
    assert (stats.num_tokens, stats.num_correct) == (1, 1)


def test_prompt_and_padding_positions_never_contribute_to_loss_or_gradient():
    logits = torch.randn(2, 6, 11, requires_grad=True)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, IGNORE, IGNORE], [IGNORE, 1, 2, 3, 4, 5]])
    loss, _ = sft_loss(logits, labels)
    loss.backward()
    # position t−1 is read only when labels[t] is set; the last position never is
    read = torch.zeros(2, 6, dtype=torch.bool)
    read[:, :-1] = labels[:, 1:] != IGNORE
    assert torch.all(logits.grad[~read] == 0) and torch.all(logits.grad[read].abs().sum(-1) > 0)
    noisy = logits.detach().clone()
    noisy[~read] += 100 * torch.randn_like(noisy[~read])
    assert torch.equal(sft_loss(noisy, labels)[0], loss.detach())


def test_accumulated_micro_batches_give_the_loss_and_gradient_of_one_big_batch():
    logits = torch.randn(4, 5, 13, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 13, (4, 5))
    labels[0, 1:] = IGNORE  # a micro-batch with few tokens must not get more weight per token
    labels[1, 3:] = IGNORE
    full, stats = sft_loss(logits, labels)
    (g_full,) = torch.autograd.grad(full, logits)
    n = stats.num_tokens
    parts = [sft_loss(logits[i:i + 2], labels[i:i + 2], num_tokens=n)[0] for i in (0, 2)]
    (g_acc,) = torch.autograd.grad(sum(parts), logits)
    torch.testing.assert_close(sum(parts), full, **TOL[torch.float64])
    torch.testing.assert_close(g_acc, g_full, **TOL[torch.float64])


def test_a_padded_batch_gives_every_example_its_unpadded_loss(cache, tok):
    model, _ = load_model("tiny-llama", cache_dir=cache, trainable=False)
    examples = [encode_example(tok, p, c, max_length=512) for p, c in _gsm8k_texts(tok, 3)]
    assert len({len(e.input_ids) for e in examples}) > 1  # really ragged
    batch = collate(examples, pad_id=tok.pad_token_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"].long()).logits
    for i, e in enumerate(examples):
        alone = model(input_ids=torch.tensor([e.input_ids])).logits
        in_batch = sft_loss(logits[i:i + 1], batch["labels"][i:i + 1])[0]
        torch.testing.assert_close(in_batch, sft_loss(alone, torch.tensor([e.labels]))[0], **TOL[torch.float32])


# ------------------------------------------------------------------------------------- loop
def test_step_batches_visit_every_example_once_per_epoch():
    it = step_batches(10, per_step=4, seed=1)
    steps = [next(it) for _ in range(6)]  # 3 steps per epoch: 4 + 4 + 2
    assert [len(idx) for _, idx in steps] == [4, 4, 2, 4, 4, 2] and [e for e, _ in steps] == [0, 0, 0, 1, 1, 1]
    for epoch in (0, 1):
        assert sorted(i for e, idx in steps if e == epoch for i in idx) == list(range(10))
    assert [idx for _, idx in steps[:3]] != [idx for _, idx in steps[3:]]  # reshuffled


def test_sft_loss_falls_on_a_few_examples(cache, tok, tmp_path):
    model, _ = load_model("tiny-llama", cache_dir=cache, trainable=True, use_lora=False)
    examples = [encode_example(tok, p, c, max_length=512) for p, c in _gsm8k_texts(tok, 4)]
    s = SFTLoopSettings(max_steps=25, batch_size=2, grad_accum=2, learning_rate=3e-3, lr_scheduler="constant",
                        warmup_ratio=0.0, seed=0)
    run = RunDir(tmp_path / "run")
    summary = train_sft(model, tok, examples, s=s, run=run, base_name="tiny-llama")
    rows = read_metrics(run.metrics_file)
    assert [r["step"] for r in rows] == list(range(1, 26))
    assert all(math.isfinite(r[k]) for r in rows for k in ("loss", "grad_norm", "lr", "token_accuracy"))
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"] and rows[-1]["token_accuracy"] > rows[0]["token_accuracy"]
    assert summary["last_loss"] == rows[-1]["loss"]
    assert (run.final / "model.safetensors").is_file() and (run.final / "tokenizer.json").is_file()


# ------------------------------------------------------------------------------------- settings
@dataclass
class Demo:
    model: str = "m"
    """model"""
    learning_rate: float = 1.0
    """lr"""
    batch_size: int = 1
    """batch"""


def test_sectioned_config_applies_common_then_its_section_then_flags(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"common": {"model": "x", "batch_size": 2}, "sft": {"batch_size": 3},
                               "grpo": {"no_such_key": 1}}))  # other scripts' sections are not read
    s = parse_settings(Demo, section="sft", argv=["--config", str(cfg), "--lr", "0.5"],
                               aliases={"lr": "learning_rate"})
    assert (s.model, s.batch_size, s.learning_rate) == ("x", 3, 0.5)
    s = parse_settings(Demo, section="sft", argv=[f"--config={cfg}", "--batch-size", "7"])
    assert (s.model, s.batch_size, s.learning_rate) == ("x", 7, 1.0)


def test_flat_config_files_still_work_and_unknown_keys_name_the_section(tmp_path):
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"batch_size": 4}))
    assert parse_settings(Demo, section="sft", argv=["--config", str(flat)]).batch_size == 4
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"sft": {"batch_sise": 4}}))
    with pytest.raises(ConfigError, match=r"bad.json \[sft\]: unknown key `batch_sise`.*batch_size"):
        parse_settings(Demo, section="sft", argv=["--config", str(bad)])


def test_the_grpo_section_of_configs_gsm8k_fits_grpo_settings():
    # The sft and evaluate sections are checked by running the scripts (test_scripts_sft_eval.py).
    GRPOSettings = pytest.importorskip("grpo.settings").GRPOSettings
    data = json.loads((Path(__file__).resolve().parents[1] / "configs" / "gsm8k.json").read_text())
    s = settings_from_dict(GRPOSettings, {**data["common"], **data["grpo"]}, where="configs/gsm8k.json")
    assert (s.task, s.learning_rate, s.lora_r, s.lora_alpha) == ("gsm8k", 5e-6, 8, 16)

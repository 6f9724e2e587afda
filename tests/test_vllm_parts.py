"""The parts of grpo.vllm_engine that need no vLLM: vLLM's outputs → Rollout, merged LoRA weights, settings.

The engine itself (sampling, weight sync, the trainer through vLLM) is tested in tests/test_vllm_engine.py,
marked `vllm`, in the vLLM venv.
"""
import copy
from types import SimpleNamespace

import pytest
import torch

from grpo.config import ConfigError, parse_settings
from grpo.models import load_model, named_model_path
from grpo.rollout import completion_mask, stop_string_positions
from grpo.settings import GRPOSettings
from grpo import vllm_engine
from grpo.vllm_engine import checkpoint_weights, rollout_from_outputs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(named_model_path("tiny-llama", cache_dir=tmp_path_factory.mktemp("models")))


def fake_output(ids, *, finish, logps=None, index=0):
    logprobs = None if logps is None else [{t: SimpleNamespace(logprob=lp)} for t, lp in zip(ids, logps)]
    return SimpleNamespace(token_ids=ids, logprobs=logprobs, finish_reason=finish, index=index)


def test_outputs_become_the_rollout_the_hf_path_builds(tiny):
    _, tok = load_model(tiny, trainable=False)
    eos = tok.eos_token_id
    prompt_ids, prompt_mask = torch.tensor([[0, 5, 6], [7, 8, 9]]), torch.tensor([[False, True, True], [True] * 3])
    words = [tok.encode(w, add_special_tokens=False) for w in (" a b", " c", " d e f")]
    rows = [fake_output(words[0] + [eos], finish="stop", logps=[-1.0] * (len(words[0]) + 1)),
            fake_output(words[2], finish="length", logps=[-2.0] * len(words[2])),  # truncated
            fake_output(words[1] + [eos], finish="stop", logps=[-0.5] + [float("nan")] * len(words[1])),  # unscored
            fake_output(words[1] + words[0], finish="length", logps=None)]
    r = rollout_from_outputs(tok, prompt_ids, prompt_mask, rows, G=2, eos_ids=[eos], stop_strings=())
    assert torch.equal(r.prompt_ids, prompt_ids.repeat_interleave(2, 0))
    lengths = [len(c.token_ids) for c in rows]
    assert r.completion_ids.shape == (4, max(lengths))
    assert r.completion_mask.sum(-1).tolist() == lengths  # EOS included, padding out
    assert r.truncated.tolist() == [False, True, False, True]
    # the same masks the HF path computes from the same ids (grpo.rollout [D4])
    want, ended = completion_mask(r.completion_ids.masked_fill(~r.completion_mask, -1), eos_ids=[eos])
    assert torch.equal(want & r.completion_mask, r.completion_mask) and torch.equal(~ended, r.truncated)
    assert r.completions[0] == tok.decode(words[0], skip_special_tokens=True)
    assert r.logp[0, :lengths[0]].tolist() == [-1.0] * lengths[0]
    assert torch.isnan(r.logp[2, 1]) and r.logp[2, 0] == -0.5  # NaN kept: grpo.correction gives it weight 1
    assert (r.logp[~r.completion_mask] == 0).all() and r.sampler == "vllm"


def test_stop_string_ends_the_mask_at_the_token_completing_it(tiny):
    _, tok = load_model(tiny, trainable=False)
    ids = tok.encode(" ab cd ef gh", add_special_tokens=False)
    stop = tok.decode(ids[:2])[-2:]  # a string completed by the second token
    rows = [fake_output(ids, finish="stop", logps=[-1.0] * len(ids))]
    r = rollout_from_outputs(tok, torch.tensor([[3]]), torch.tensor([[True]]), rows, G=1, eos_ids=[tok.eos_token_id],
                             stop_strings=(stop,))
    at = int(stop_string_positions(tok, torch.tensor([ids]), [stop])[0])
    assert at >= 0 and r.completion_mask.sum().item() == at + 1 and not r.truncated.item()


def test_a_stop_vllm_saw_but_the_ids_do_not_show_ends_the_row_at_its_last_token(tiny):
    _, tok = load_model(tiny, trainable=False)
    ids = tok.encode(" ab cd", add_special_tokens=False)
    rows = [fake_output(ids, finish="stop", logps=[-1.0] * len(ids)), fake_output(ids + ids, finish="length")]
    r = rollout_from_outputs(tok, torch.tensor([[3]]), torch.tensor([[True]]), rows, G=2,
                             eos_ids=[tok.eos_token_id], stop_strings=("never-there",))
    assert r.completion_mask.sum(-1).tolist() == [len(ids), 2 * len(ids)]
    assert r.truncated.tolist() == [False, True]


@pytest.mark.parametrize("use_lora", [True, False])
def test_checkpoint_weights_are_the_merged_model_under_checkpoint_names(tiny, use_lora):
    model, _ = load_model(tiny, use_lora=use_lora, lora_r=4, lora_alpha=8)
    with torch.no_grad():  # a trained adapter: B = 0 would make the merge trivial
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = dict(checkpoint_weights(model))
    if use_lora:
        want = copy.deepcopy(model).merge_and_unload().state_dict()  # PEFT's own merge, on a copy
    else:
        want = model.state_dict()
    base, _ = load_model(tiny, trainable=False)
    assert set(got) == set(want) == set(base.state_dict())  # the checkpoint's names, nothing of the adapter
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-7, rtol=1e-6, msg=k)
    if use_lora:
        assert any(not torch.equal(got[k], base.state_dict()[k]) for k in got)  # the adapter is in there
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the trainer's model untouched


def test_the_reference_adapter_is_not_merged(tiny):
    from grpo.models import add_reference_adapter

    model, _ = load_model(tiny, use_lora=True, lora_r=4, lora_alpha=8)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05)
    want = dict(checkpoint_weights(model))
    add_reference_adapter(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ref." in name:
                p.add_(1.0)  # a reference far from the policy: merging it would show
    got = dict(checkpoint_weights(model))
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


# ------------------------------------------------------------------------------------- settings
def settings(*flags):
    return parse_settings(GRPOSettings, list(flags))


def test_use_vllm_without_vllm_names_the_setup_command(monkeypatch):
    monkeypatch.setattr(vllm_engine, "vllm_installed", lambda: False)
    with pytest.raises(ConfigError, match=r"use_vllm.*VLLM=1 bash scripts/setup_env.sh"):
        settings("--use-vllm", "true")
    assert not settings("--use-vllm", "false").use_vllm


@pytest.mark.parametrize("flags, match", [
    (["--load-in-4bit", "true"], "use_vllm.*4-bit"),
    (["--sharding", "fsdp2"], "use_vllm.*fsdp2"),
    (["--device", "cpu", "--vllm-enable-sleep-mode", "true"], "vllm_enable_sleep_mode.*CPU"),
    (["--loss-type", "vespo", "--vllm-importance-sampling-mode", "sequence_mask"], "vllm_importance_sampling_mode"),
    (["--vllm-importance-sampling-clip-min", "2", "--vllm-importance-sampling-clip-max", "1"], "clip_max"),
    (["--vllm-importance-sampling-clip-max", "0"], "clip_max"),
    (["--vllm-importance-sampling-mode", "token_truncate", "--vllm-importance-sampling-clip-max", "null"],
     "vllm_importance_sampling_mode"),
    (["--vllm-gpu-memory-utilization", "0"], "vllm_gpu_memory_utilization"),
])
def test_vllm_settings_that_cannot_work_are_one_line_errors(monkeypatch, flags, match):
    monkeypatch.setenv("WORLD_SIZE", "2") if "fsdp2" in flags else None
    monkeypatch.setattr(vllm_engine, "vllm_installed", lambda: True)
    with pytest.raises(ConfigError, match=match):
        settings("--use-vllm", "true", "--prompts-per-step", "2", *flags)


def test_vespo_with_a_token_mode_and_the_defaults_pass(monkeypatch):
    monkeypatch.setattr(vllm_engine, "vllm_installed", lambda: True)
    s = settings("--use-vllm", "true", "--loss-type", "vespo", "--vllm-importance-sampling-mode", "token_mask")
    assert s.vllm_importance_sampling_clip_max == 3.0 and s.vllm_importance_sampling_clip_min is None
    assert settings("--use-vllm", "true").vllm_importance_sampling_mode == "sequence_mask"  # TRL's default

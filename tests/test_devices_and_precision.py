"""Where each rank's model lives and in which precision it runs (grpo.models [D6] [D8], grpo.distributed).

No GPU here: CUDA's presence is stood in by monkeypatching `torch.cuda.is_available`, and CPU autocast
stands in for CUDA autocast (the same dispatch, a different device type).
"""
import pytest
import torch

from grpo import distributed as dd
from grpo import models
from grpo.models import autocast, resolve_device, use_bf16


@pytest.fixture
def cuda_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")


def test_cuda_and_auto_mean_this_ranks_gpu(cuda_present):
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index is kept
    assert resolve_device("cpu") == torch.device("cpu")


def test_the_backend_follows_the_device_not_the_machine(cuda_present):
    assert dd.backend_for("cpu") == "gloo"  # it was NCCL whenever CUDA existed
    assert dd.backend_for("cuda") == "nccl" and dd.backend_for("auto") == "nccl"


def test_without_cuda_auto_is_the_cpu_and_gloo(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and dd.backend_for("auto") == "gloo"


def test_4bit_model_of_rank_1_is_placed_on_gpu_1(cuda_present, monkeypatch, tmp_path):
    """bitsandbytes' device_map used `dev.index or 0`: with device=auto every rank landed on GPU 0."""
    seen = {}

    class Stop(Exception):
        """Raised by the stand-in from_pretrained once it has seen its arguments."""

    def fake_from_pretrained(path, **kwargs):
        seen.update(kwargs)
        raise Stop

    from transformers import AutoModelForCausalLM
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        for device in ("auto", "cuda"):
            with pytest.raises(Stop):
                models.load_model("tiny-llama", device=device, load_in_4bit=True, use_lora=True, cache_dir=tmp_path)
            assert seen["device_map"] == {"": 1}, device
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def test_bf16_autocast_is_on_for_cuda_and_off_for_the_cpu_unless_set():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert use_bf16(cuda, None) and not use_bf16(cpu, None)
    assert not use_bf16(cuda, False) and use_bf16(cpu, True)
    with autocast(cpu, True):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast(cpu, None):
        assert not torch.is_autocast_enabled("cpu")


def test_grpo_step_under_bf16_autocast_runs_the_decoder_matmuls_in_bf16_and_the_head_in_fp32(tmp_path,
                                                                                              monkeypatch):
    """What is bf16 in the trainer's bf16 path (grpo.models [D8]): the decoder's matmul outputs; the residual
    stream stays fp32 (fp32 embeddings), and the LM head's log-probs and entropies, hence the loss, are fp32.
    CPU autocast stands in for CUDA's."""
    import grpo.policy
    from grpo_helpers import make_trainer

    seen, linear_out = [], []
    original = grpo.policy.lm_head_logprobs_and_entropy

    def spy(hidden, weight, ids, **kw):
        logp, entropy = original(hidden, weight, ids, **kw)
        seen.append((hidden.dtype, weight.dtype, logp.dtype, entropy.dtype, torch.is_grad_enabled()))
        return logp, entropy

    monkeypatch.setattr(grpo.policy, "lm_head_logprobs_and_entropy", spy)
    trainer = make_trainer(tmp_path / "cache", bf16=True)
    q_proj = next(m for n, m in trainer.model.named_modules() if n.endswith("layers.0.self_attn.q_proj.base_layer"))
    q_proj.register_forward_hook(lambda mod, inp, out: linear_out.append(out.dtype))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    metrics = trainer.step()
    assert all(v == v and abs(v) < float("inf") for k, v in metrics.items() if k in ("loss", "grad_norm"))
    assert linear_out and set(linear_out) == {torch.bfloat16}  # sampling, scoring and the update: bf16 matmuls
    graded = [s for s in seen if s[4]]  # the update's forward (with grad)
    assert graded and all(s[:4] == (torch.float32,) * 4 for s in graded)
    after = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert all(after[n].dtype == torch.float32 for n in after)  # the trained weights stay fp32 (master copy)
    assert any(not torch.equal(after[n], before[n]) for n in after)

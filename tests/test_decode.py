"""grpo.decode: our decoding loop against Hugging Face `generate` (the reference), and its categorical draw."""
import pytest
import torch

from grpo.decode import decode, draw_categorical
from grpo.models import load_model, named_model_path
from grpo.policy import completion_logprobs
from grpo.rollout import Sampling, encode_prompts, eos_token_ids, sample_group
from kernels.few_rows import few_rows_unavailable

PROMPTS = [[{"role": "user", "content": "What is 12 + 7?"}], [{"role": "user", "content": "Name three colours please."}]]
SAMPLINGS = [dict(), dict(top_k=20), dict(top_p=0.8, temperature=0.7), dict(min_p=0.05), dict(stop_strings=(" ",)),
             dict(score="sampling", top_k=5), dict(max_new_tokens=1)]


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    model, tok = load_model(str(named_model_path("tiny-llama", cache_dir=tmp_path_factory.mktemp("m"))),
                            use_lora=True, lora_r=8, lora_alpha=16)
    with torch.no_grad():  # a trained adapter, so LoRA's path matters
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return model, tok


@pytest.mark.parametrize("static_cache", [True, False])
@pytest.mark.parametrize("kw", SAMPLINGS, ids=str)
def test_decode_with_multinomial_draws_exactly_what_generate_draws(lora, static_cache, kw):
    model, tok = lora
    ids, mask = encode_prompts(tok, PROMPTS)
    s = Sampling(**{"max_new_tokens": 24, "decode_step": "hf", **kw})  # [G2]: the modules, as generate calls them
    torch.manual_seed(3)
    ref = sample_group(model, tok, ids, mask, G=4, sampling=s, loop="generate")
    torch.manual_seed(3)
    model.eval()
    c, lp, h = decode(model, tok, ids, mask, G=4, sampling=s, eos_ids=eos_token_ids(model, tok),
                      static_cache=static_cache, draw="multinomial")
    model.train()
    m = ref.completion_mask
    assert c.shape == ref.completion_ids.shape
    assert torch.equal(c.masked_fill(~m, tok.pad_token_id), ref.completion_ids)
    # the same tokens, bitwise; the recorded numbers to float rounding (the static cache's attention sums over
    # its full masked width, in another order than the growing cache's)
    torch.testing.assert_close(lp[m], ref.logp[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h[m], ref.entropy[m], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", SAMPLINGS[:5], ids=str)
def test_the_default_loop_records_the_policy_it_samples_from(lora, kw):
    model, tok = lora
    ids, mask = encode_prompts(tok, PROMPTS)
    s = Sampling(**{"max_new_tokens": 24, **kw})
    r = sample_group(model, tok, ids, mask, G=4, sampling=s, generator_seed=1)
    with torch.no_grad():
        lp, h = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                    temperature=s.temperature)
    m = r.completion_mask
    torch.testing.assert_close(r.logp[m], lp[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r.entropy[m], h[m], atol=1e-5, rtol=1e-5)
    assert ((r.lengths == s.max_new_tokens) | ~r.truncated).all()


def test_stop_strings_end_the_decoding_of_each_row(lora):
    model, tok = lora
    ids, mask = encode_prompts(tok, PROMPTS)
    s = Sampling(max_new_tokens=40, stop_strings=(" ",))
    r = sample_group(model, tok, ids, mask, G=4, sampling=s, generator_seed=2)
    assert not r.truncated.any()  # a space comes long before 40 tokens in every row
    for row, n in zip(r.completion_ids, r.lengths):
        text = tok.decode(row[:n], skip_special_tokens=False)
        assert " " in text and " " not in tok.decode(row[:n - 1], skip_special_tokens=False)
    assert r.completion_ids.shape[1] < 40  # the loop ended when every row had ended


def draw_reference(probs: torch.Tensor, u: torch.Tensor) -> list[int]:
    """float64: the smallest v whose cumulative probability exceeds u·total, row by row, in Python."""
    out = []
    for row, ui in zip(probs.double().tolist(), u.tolist()):
        total, acc = sum(row), 0.0
        for v, p in enumerate(row):
            acc += p
            if acc > ui * total:
                out.append(v)
                break
        else:
            out.append(len(row) - 1)
    return out


@pytest.mark.parametrize("V,block", [(37, 256), (37, 16), (37, 37), (1000, 256), (1000, 7)])
def test_draw_categorical_matches_the_float64_reference(monkeypatch, V, block):
    """One block or several (the two-level cumulative sum), V a multiple of the block or padded."""
    g = torch.Generator().manual_seed(V + block)
    probs = torch.rand(64, V, generator=g) * (torch.rand(64, V, generator=g) > 0.3)  # zeros inside rows
    probs[:, 0] += 1e-3  # every row has mass
    probs[:8, V // 2:] = 0  # rows whose mass ends early: whole blocks of zeros at the end
    u = torch.rand(64, 1, dtype=torch.float64, generator=g)
    u[0] = 1 - 2 ** -53  # the top of [0, 1): the last entry of positive probability
    monkeypatch.setattr(torch, "rand", lambda *a, **k: u.clone())
    got = draw_categorical(probs, block=block).tolist()
    assert got == draw_reference(probs, u[:, 0])
    assert all(probs[i, v] > 0 for i, v in enumerate(got))  # never a zero-probability entry


def test_draw_categorical_has_the_frequencies_of_the_distribution():
    torch.manual_seed(0)
    p = torch.tensor([0.5, 0.0, 0.25, 0.125, 0.0, 0.0625, 0.0625])
    n = 200_000
    draws = draw_categorical(p.expand(n, -1).contiguous())
    freq = torch.bincount(draws, minlength=7).double() / n
    sigma = (p.double() * (1 - p.double()) / n).sqrt()
    assert (freq[p == 0] == 0).all()
    assert ((freq - p.double()).abs() <= 5 * sigma + 1e-12).all(), freq


@pytest.mark.parametrize("kernel", ["auto", "torch"])
def test_decoding_linears_run_few_rows_fast_and_change_nothing_else(lora, kernel):
    """[G8]: inside the block a patched layer gives its normal output for few rows (to rounding), and for
    many rows too by the kernel ("auto" where it runs) or its very own path (torch.mm's "torch"), on 1 and on
    2 threads; after it the modules and the weights are as they were."""
    from grpo.decode_linears import decoding_linears
    from grpo.policy import lora_layers

    model, _ = lora
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = [m for _, m in lora_layers(model)] + [m for m in model.modules() if type(m) is torch.nn.Linear]
    by_kernel = kernel == "auto" and few_rows_unavailable() is None
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            few = [torch.randn(8, m.get_base_layer().in_features if hasattr(m, "get_base_layer") else m.in_features)
                   for m in layers]
            many = [torch.randn(200, x.shape[1]) for x in few]
            with torch.no_grad():
                want_few = [m(x) for m, x in zip(layers, few)]
                want_many = [m(x) for m, x in zip(layers, many)]
                with decoding_linears(model, kernel=kernel):
                    got_few = [m(x) for m, x in zip(layers, few)]
                    got_many = [m(x) for m, x in zip(layers, many)]
            for g, w in zip(got_few + got_many, want_few + want_many):
                torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
                assert g.is_contiguous()
            assert all(torch.equal(g, w) for g, w in zip(got_many, want_many)) != by_kernel
    finally:
        torch.set_num_threads(threads)
    assert all("forward" not in vars(m) for m in model.modules())  # every patch removed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_two_threads_sample_the_policy_too(lora):
    model, tok = lora
    ids, mask = encode_prompts(tok, PROMPTS)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        r = sample_group(model, tok, ids, mask, G=4, sampling=Sampling(max_new_tokens=24), generator_seed=1)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        lp, _ = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
    torch.testing.assert_close(r.logp[r.completion_mask], lp[r.completion_mask], atol=1e-5, rtol=1e-5)


def test_a_static_cache_that_cannot_be_built_falls_back_to_the_dynamic_one(lora, monkeypatch):
    """[G6]: an older transformers whose StaticCache cannot take the prefill: the loop samples all the same."""
    import transformers

    model, tok = lora
    ids, mask = encode_prompts(tok, PROMPTS)

    class Broken:
        def __init__(self, *a, **k):
            raise TypeError("no such StaticCache signature")

    s = Sampling(max_new_tokens=16, decode_step="hf")  # the Hugging Face modules' caches (grpo.decode [G10])
    want = sample_group(model, tok, ids, mask, G=4, sampling=s, generator_seed=5, static_cache=False)
    monkeypatch.setattr(transformers, "StaticCache", Broken)
    got = sample_group(model, tok, ids, mask, G=4, sampling=s, generator_seed=5)
    assert torch.equal(got.completion_ids, want.completion_ids)
    torch.testing.assert_close(got.logp, want.logp, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------- bf16 sampler [G9]
def merged_weight_longhand(layer) -> torch.Tensor:
    """W + B·A·α/r of a PEFT LoRA layer (one adapter), in the layer's dtype, written out here."""
    (name,) = layer.active_adapters
    return layer.get_base_layer().weight + (layer.lora_B[name].weight @ layer.lora_A[name].weight) * layer.scaling[name]


def test_bf16_decoding_linears_run_bf16_matmuls_for_every_decoding_step_and_change_no_weight(lora):
    """[G9]: inside the block a decoding step's rows [N, 1, in], for few N and many, come from bf16 copies of W
    (LoRA: of W + ΔW): the float64 product of the bf16-rounded inputs, rounded to bf16 once; a prefill's rows
    (several positions each, few or many) keep the module's own fp32 path; after it the modules and the
    weights are as they were."""
    from conftest import TOL

    from grpo.decode_linears import decoding_linears
    from grpo.policy import causal_lm, lora_layers

    model, _ = lora
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loras = [m for _, m in lora_layers(model)]
    plain = [causal_lm(model).get_output_embeddings()]  # the LM head, a plain nn.Linear (tied to the embedding)
    assert loras and type(plain[0]) is torch.nn.Linear, "the test needs both kinds of layer"
    weights = [merged_weight_longhand(m) for m in loras] + [m.weight for m in plain]
    layers = loras + plain
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            for shape in ((8, 1), (200, 1)):  # decoding steps of 8 and of 200 rows, one position each
                xs = [torch.randn(*shape, w.shape[1]) for w in weights]
                with torch.no_grad():
                    want_fp32 = [m(x) for m, x in zip(layers, xs)]
                    with decoding_linears(model, "bfloat16"):
                        got = [m(x) for m, x in zip(layers, xs)]
                for g, x, w, f in zip(got, xs, weights, want_fp32):
                    ref = x.bfloat16().double() @ w.detach().bfloat16().double().t()  # [.., out] float64
                    assert g.dtype == torch.float32 and g.shape == f.shape
                    torch.testing.assert_close(g.double(), ref, **TOL[("stored", torch.bfloat16)])
                assert max(float((g - f).abs().max()) for g, f in zip(got, want_fp32)) > 1e-4  # not fp32's
            for shape in ((1, 200), (2, 10)):  # prefills: one prompt of 200 tokens, two of 10 (20 rows)
                prefill = [torch.randn(*shape, w.shape[1]) for w in weights]
                with torch.no_grad():
                    want = [m(x) for m, x in zip(layers, prefill)]
                    with decoding_linears(model, "bfloat16"):
                        got = [m(x) for m, x in zip(layers, prefill)]
                assert all(torch.equal(g, w) for g, w in zip(got, want))
    finally:
        torch.set_num_threads(threads)
    assert all("forward" not in vars(m) for m in model.modules())  # every patch removed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# nats, |lp_bf16 − lp_fp32| over sampled tokens; measured on this file's tiny-llama + noisy LoRA, 24 tokens, seeds
# 0-3, 1 and 2 threads: max 2.5e-3 to 3.3e-3, mean 6.4e-4 to 6.9e-4 (fp32 sampling: max 1e-6)
BF16_GAP_MAX, BF16_GAP_MEAN = 5e-2, 1e-2


@pytest.mark.parametrize("n_threads", [1, 2])
def test_bf16_sampling_records_its_own_logprobs_a_small_nonzero_gap_from_the_fp32_policy(lora, n_threads):
    model, tok = lora
    ids, mask = encode_prompts(tok, PROMPTS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        r = sample_group(model, tok, ids, mask, G=4, sampling=Sampling(max_new_tokens=24, linear_dtype="bfloat16"),
                         generator_seed=1)
    finally:
        torch.set_num_threads(threads)
    assert r.sampler == "hf-bf16"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the weights untouched
    assert all("forward" not in vars(m) for m in model.modules())
    with torch.no_grad():
        lp, h = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
    m = r.completion_mask
    gap = (r.logp - lp)[m].abs()  # |lp_bf16 − lp_fp32| over the sampled tokens
    msg = f"bf16 sampler log-prob gap to the fp32 forward: max {gap.max():.3g}, mean {gap.mean():.3g} nats"
    assert 1e-4 < float(gap.max()) < BF16_GAP_MAX and float(gap.mean()) < BF16_GAP_MEAN, msg  # > fp32's 1e-5
    assert float((r.entropy - h)[m].abs().max()) < BF16_GAP_MAX, "its entropies are the bf16 distribution's"


def _few_rows_before_g9(weight, bias, default):
    """The [G8] layer as it was before [G9] (commit b46ebf2), the reference of the default path."""
    from grpo.decode_linears import FEW_ROWS

    transpose = torch.get_num_threads() > 1 and weight.device.type == "cpu"

    def forward(x, *args, **kwargs):
        if args or kwargs or x.dim() < 2 or x.numel() // x.shape[-1] > FEW_ROWS or x.dtype != weight.dtype:
            return default(x, *args, **kwargs)
        rows = x.reshape(-1, x.shape[-1])
        y = torch.mm(weight, rows.t()).t().contiguous() if transpose else torch.mm(rows, weight.t())
        if bias is not None:
            y = y + bias
        return y.reshape(*x.shape[:-1], weight.shape[0])

    return forward


@pytest.mark.parametrize("n_threads", [1, 2])
def test_the_float32_torch_mm_sampler_is_bitwise_what_it_was(lora, monkeypatch, n_threads):
    """linear_kernel="torch" with the Hugging Face modules (decode_step="hf") is the default path as it was
    before [G9] (and before kernels.few_rows and grpo.decode_step)."""
    import grpo.decode_linears

    model, tok = lora
    ids, mask = encode_prompts(tok, PROMPTS)
    s = Sampling(max_new_tokens=24, linear_kernel="torch", decode_step="hf")
    assert s.linear_dtype == "float32"
    threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        got = sample_group(model, tok, ids, mask, G=4, sampling=s, generator_seed=1)
        monkeypatch.setattr(grpo.decode_linears, "_few_rows",
                            lambda w, b, f, cast=None, kernel=False: (_few_rows_before_g9(w, b, f), None))
        want = sample_group(model, tok, ids, mask, G=4, sampling=s, generator_seed=1)
    finally:
        torch.set_num_threads(threads)
    assert got.sampler == want.sampler == "hf"
    for name in ("completion_ids", "completion_mask", "logp", "entropy"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


def test_a_bf16_sampler_needs_our_decoding_loop(lora):
    model, tok = lora
    ids, mask = encode_prompts(tok, PROMPTS)
    with pytest.raises(ValueError, match="linear_dtype='bfloat16' needs loop='decode'"):
        sample_group(model, tok, ids, mask, G=2, sampling=Sampling(max_new_tokens=4, linear_dtype="bfloat16"),
                     loop="generate")


needs_few_rows = pytest.mark.skipif(few_rows_unavailable() is not None,
                                    reason=f"kernels.few_rows unavailable here: {few_rows_unavailable()}")


@needs_few_rows
@pytest.mark.parametrize("n_threads", [1, 2])
def test_the_default_sampler_runs_every_decoding_linear_through_the_kernel_and_samples_the_policy(
        lora, few_rows_calls, n_threads):
    """[G8]: with linear_kernel="auto" (the default) every linear layer of every decoding step is one
    kernels.few_rows call; the recorded log-probs match a forward pass, and the samples are the torch.mm path's
    (their logits differ by rounding only)."""
    from grpo.decode_linears import decoding_linear_layers

    model, tok = lora
    ids, mask = encode_prompts(tok, PROMPTS)
    assert Sampling().linear_kernel == "auto"
    threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        calls = few_rows_calls
        r = sample_group(model, tok, ids, mask, G=4, sampling=Sampling(max_new_tokens=24), generator_seed=1)
        by_kernel = list(calls)
        torch_mm = sample_group(model, tok, ids, mask, G=4, sampling=Sampling(max_new_tokens=24, linear_kernel="torch"),
                                generator_seed=1)
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == len(by_kernel)  # torch.mm's path never calls the kernel
    steps, L = r.completion_ids.shape[1], model.config.num_hidden_layers
    assert len(decoding_linear_layers(model)) == 7 * L + 1
    # the prefill of P - 1 positions for the 2 prompts (the LM head on their last position only), then every
    # step's 8 rows
    prefill = [2 * (ids.shape[1] - 1)] * (7 * L) + [2]
    assert by_kernel == prefill + [8] * ((7 * L + 1) * steps)
    with torch.no_grad():
        lp, h = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
    m = r.completion_mask
    torch.testing.assert_close(r.logp[m], lp[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r.entropy[m], h[m], atol=1e-5, rtol=1e-5)
    assert torch.equal(r.completion_ids, torch_mm.completion_ids)
    torch.testing.assert_close(r.logp, torch_mm.logp, atol=1e-5, rtol=1e-5)


@needs_few_rows
def test_under_cpu_autocast_or_with_a_gradient_the_decoding_linears_keep_torch_s_path(lora, few_rows_calls):
    """Autocast runs a module's matmul in bf16; the kernel is fp32, so under autocast the patched layers keep
    torch.mm (the policy the trainer scores under the same autocast) and never call the kernel. Nor when a
    gradient is asked for: the kernel has no backward."""
    from grpo.decode_linears import decoding_linear_layers, decoding_linears

    model, _ = lora
    calls = few_rows_calls
    layer = next(m for m, is_lora in decoding_linear_layers(model) if not is_lora)  # the LM head
    x = torch.randn(8, 1, layer.in_features)
    with torch.no_grad(), decoding_linears(model):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        assert y.dtype == torch.bfloat16 and calls == []
        assert layer(x).dtype == torch.float32 and calls == [8]
    with decoding_linears(model):  # the kernel has no backward: a gradient asked for keeps torch's path
        x.requires_grad_(True)
        y = layer(x)
        y.sum().backward()
    assert y.requires_grad and calls == [8]
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand_as(x), atol=1e-4, rtol=1e-4)


def test_a_kernel_that_cannot_run_leaves_torch_mm_with_one_warning_naming_why(lora, monkeypatch, few_rows_calls):
    import grpo.decode_linears

    model, tok = lora
    ids, mask = encode_prompts(tok, PROMPTS)
    monkeypatch.setattr(grpo.decode_linears, "few_rows_unavailable",
                        lambda: "no C++ compiler found (set CXX, or install g++)")
    calls = few_rows_calls
    with pytest.warns(UserWarning, match=r"torch\.mm, not the AVX-512 kernel \(kernels\.few_rows: no C\+\+ compiler"):
        got = sample_group(model, tok, ids, mask, G=2, sampling=Sampling(max_new_tokens=8), generator_seed=1)
    want = sample_group(model, tok, ids, mask, G=2, sampling=Sampling(max_new_tokens=8, linear_kernel="torch"),
                        generator_seed=1)
    assert calls == [] and torch.equal(got.logp, want.logp)
    with pytest.raises(ValueError, match="linear_kernel must be one of auto, torch, got 'mkl'"):
        sample_group(model, tok, ids, mask, G=2, sampling=Sampling(max_new_tokens=8, linear_kernel="mkl"))

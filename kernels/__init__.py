"""kernels: fused per-token log-prob / entropy and entropy-based token selection (pure PyTorch + Triton).

    token_logprobs_and_entropy(logits, ids, *, temperature, mask, backend)   kernels/entropy.py
    lm_head_logprobs_and_entropy(hidden, weight, ids, *, temperature, bias, mask, chunk_tokens,
                                 chunk_vocab)                                kernels/lm_head_entropy.py
    top_m_entropy_mean(entropy, mask, *, top_m)                              kernels/fork_selection.py
    top_k_entropy_mask(entropy, mask, *, rho, process_group)                 kernels/fork_selection.py

Backends of the first op: kernels/entropy_cpu.py (compiled one pass, chunked eager fallback) and
kernels/entropy_triton.py (CUDA), checked against the float64 definition in tests/test_kernels_*.py.
The decoding step's C++ CPU kernels (AVX-512, built on first use by kernels/cpp_build.py, imported from their
modules by grpo.decode_linears / grpo.decode_step):
    FewRowsLinear(weight)(x), few_rows_linear(x, weight)                kernels/few_rows.py
    decode_attention(q, k, v, cos, sin, K, V, *, col, mask, scale)      kernels/decode_attention.py
Nothing here imports grpo or sega (STYLE.md layout), and Triton is imported only when used.

The name `kernels` is also Hugging Face's hub-kernel loader (PyPI `kernels`), which transformers and
bitsandbytes probe for (issue #14 item 10). What happens, by design (tests/test_kernels_name_clash.py):
    [K1] This package alone (the tested setup): every probe concludes "Hugging Face's kernels is not
         installed". `importlib.metadata.version("kernels")` finds no distribution of that name;
         transformers maps the import name to our distribution, grpo-sega, whose version (setup.py)
         stays below transformers' KERNELS_MIN_VERSION (0.18.2), so `is_kernels_available()` is False;
         bitsandbytes' `from kernels import get_kernel` gets the ModuleNotFoundError it gets without any
         `kernels`, so its "pip install kernels" notice (printed on AVX512-BF16 CPUs whenever hub
         kernels are missing) no longer names this folder.
    [K2] Both installed: Python imports one top-level `kernels` per process. This project's scripts and
         tests put the checkout first on sys.path, so ours would win and transformers, reading Hugging
         Face's version from its metadata, would then import hub-kernel names that do not exist here.
         So importing this package with a `kernels` distribution installed is one ImportError naming
         both locations and the fix (`pip uninstall kernels`): grpo-sega does not use hub kernels.
    [K3] Our own modules load from this folder once this package is the `kernels` being imported
         (the imports below are relative), whatever else sits on sys.path.
"""
import importlib.metadata as _metadata
from pathlib import Path as _Path


def _hub_kernels_distribution() -> "_metadata.Distribution | None":
    """Hugging Face's `kernels` distribution when one is installed [K2] (ours is named grpo-sega)."""
    try:
        return _metadata.distribution("kernels")
    except _metadata.PackageNotFoundError:
        return None


_hub = _hub_kernels_distribution()
if _hub is not None:  # [K2]
    raise ImportError(
        f"two packages named `kernels` are installed: this project's ({_Path(__file__).parent}) and Hugging "
        f"Face's kernels {_hub.version} ({_hub.locate_file('kernels')}). Python imports only one of them per "
        "process, and transformers would take ours for Hugging Face's. grpo-sega does not use hub kernels: "
        "`pip uninstall kernels` (in this environment) and run again.", name="kernels")

from .entropy import token_logprobs_and_entropy  # noqa: E402  [K3]
from .fork_selection import top_k_entropy_mask, top_m_entropy_mean  # noqa: E402
from .lm_head_entropy import lm_head_logprobs_and_entropy  # noqa: E402

__all__ = ["token_logprobs_and_entropy", "lm_head_logprobs_and_entropy", "top_m_entropy_mean",
           "top_k_entropy_mask"]

# Hugging Face kernels' public API (kernels 0.17 `__all__`): asking this package for one of these names is
# the probe of a library looking for hub kernels, answered as if no `kernels` were installed [K1].
HUB_KERNELS_NAMES = frozenset({
    "Benchmark", "CUDAProperties", "Device", "FuncRepository", "KernelizeFallback", "LayerRepository",
    "LoadedKernel", "LocalFuncRepository", "LocalLayerRepository", "LockedFuncRepository",
    "LockedLayerRepository", "Metadata", "Mode", "ROCMProperties", "RepoInfo", "VariantAccepted",
    "VariantRejected", "get_kernel", "get_kernel_dep", "get_kernel_variants", "get_loaded_kernels",
    "get_local_kernel", "get_locked_kernel", "has_kernel", "install_kernel", "kernelize", "load_kernel",
    "register_kernel_mapping", "replace_kernel_forward_from_hub", "use_kernel_forward_from_hub",
    "use_kernel_func_from_hub", "use_kernel_mapping", "use_kernelized_func"})


def __getattr__(name: str):
    if name in HUB_KERNELS_NAMES:  # [K1] ModuleNotFoundError, not AttributeError: `from kernels import x`
        # would turn an AttributeError into "cannot import name 'x' from 'kernels' (<this folder>)"
        raise ModuleNotFoundError(f"No module named 'kernels' providing {name!r} (Hugging Face's kernels "
                                  "is not installed)", name="kernels")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

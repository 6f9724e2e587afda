"""FSDP2 sharding (issue #15): two CPU processes (torchrun, gloo) with sharded weights make the same update
as one unsharded process over the same global batch, and sample the same tokens."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo_helpers import assert_same_update

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "fsdp_update_worker.py"


def _launch(nproc: int, out: Path, cache: Path, sharding: str, use_lora: bool) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(WORKER), str(out), str(cache), sharding, str(int(use_lora))]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return torch.load(out)


@pytest.mark.parametrize("use_lora", [False, True], ids=["full", "lora"])
def test_fsdp2_on_two_ranks_makes_the_same_update_as_one_process(tmp_path, use_lora):
    """float64 to 1e-10: gradient (the sum convention, grpo.sharding [S2]) and weights after AdamW.

    Sampling under fsdp2 gathers each FSDP unit once per rollout, not once per decoding step [S3], and draws
    the same tokens with the same log-probs as the unsharded model at the same seed.
    """
    cache = Path(os.environ.get("GRPO_TEST_CACHE", tmp_path / "cache"))
    one = _launch(1, tmp_path / "one.pt", cache, "none", use_lora)
    two = _launch(2, tmp_path / "two.pt", cache, "fsdp2", use_lora)
    assert torch.equal(one["completion_ids"], two["completion_ids"])
    torch.testing.assert_close(two["logp"], one["logp"], atol=1e-10, rtol=1e-10)
    assert two["sampling_gathers"] <= two["units"], two  # once per unit, not per token
    assert one["completion_ids"].shape[1] > 2  # several decoding steps were sampled
    assert_same_update(two["state"], one["state"])
    if not use_lora:
        assert len([k for k in one["state"] if not k.endswith(".grad")]) > 10  # every weight trained

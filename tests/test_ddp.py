"""Two CPU processes (torchrun, gloo) make the same update as one process with the same global batch."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo_helpers import assert_same_update

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "ddp_update_worker.py"


def _launch(nproc: int, out: Path, cache: Path, loss_type: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(WORKER), str(out), str(cache), loss_type]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_two_ranks_make_the_same_update_as_one(tmp_path, loss_type):
    cache = Path(os.environ.get("GRPO_TEST_CACHE", tmp_path / "cache"))
    _launch(1, tmp_path / "one.pt", cache, loss_type)
    _launch(2, tmp_path / "two.pt", cache, loss_type)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one.keys() == two.keys() and len(one) > 0
    moved = [k for k in one if k.endswith("lora_B.default.weight") and one[k].abs().sum() > 0]
    assert moved, "the update did not move the adapter"
    assert_same_update(two, one)

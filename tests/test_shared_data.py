"""Shared data (issue #14 item 11): every test finds ../shared beside *its own* checkout (no absolute
path), skips without it on a developer's machine, and fails without it under CI instead of skipping.

Each case runs the GSM8K tests with pytest in a subprocess, from a copy of the test files in a fresh
"checkout" folder, with or without a `shared` folder beside it."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
FILES = ("conftest.py", "test_data_gsm8k.py", "test_rewards_math.py")
SELECT = "real_gsm8k or every_gsm8k"  # the tests that read ../shared/data/gsm8k


def run_copied_tests(tmp_path: Path, *, ci: str | None) -> subprocess.CompletedProcess:
    tests = tmp_path / "checkout" / "tests"
    tests.mkdir(parents=True)
    for name in FILES:
        shutil.copy(TESTS / name, tests / name)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update({"OMP_NUM_THREADS": "1"} if ci is None else {"OMP_NUM_THREADS": "1", "CI": ci})
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", SELECT,
                           str(tests)], cwd=tmp_path / "checkout", env=env, capture_output=True, text=True,
                          timeout=300)


def counts(p: subprocess.CompletedProcess) -> str:
    return p.stdout.strip().splitlines()[-1]  # e.g. "4 passed in 3.1s"


@pytest.mark.parametrize("ci", ["true", "1"])
def test_missing_shared_data_fails_the_run_under_ci(tmp_path, ci):
    p = run_copied_tests(tmp_path, ci=ci)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "skipped" not in counts(p) and "passed" not in counts(p)  # 5 failed (or errored in a fixture)
    assert f"shared data not found: {tmp_path / 'shared' / 'data/gsm8k'}" in p.stdout
    assert "under CI missing shared data fails the run instead of skipping" in p.stdout


def test_missing_shared_data_skips_outside_ci(tmp_path):
    p = run_copied_tests(tmp_path, ci="false")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "5 skipped" in counts(p) and "passed" not in counts(p)


def test_shared_data_is_found_beside_the_checkout_not_at_a_fixed_path(tmp_path, shared_data):
    real = shared_data("data/gsm8k/test.jsonl").parents[2]  # this checkout's ../shared
    (tmp_path / "shared").symlink_to(real, target_is_directory=True)
    p = run_copied_tests(tmp_path, ci="true")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "5 passed" in counts(p) and "skipped" not in counts(p)

"""Running the pipeline scripts from tests: as a subprocess, or in-process through the same `__main__` path.

Each pipeline test runs scripts/train_grpo.py as a real subprocess (the shared entry point, with the
pipeline's config file); the pipeline's own scripts run in-process with `runpy.run_path(...,
run_name="__main__")`, which executes the same `cli_main(main)` line a shell would. On a 2-core
machine a subprocess costs ~10 s of imports (torch, transformers, peft, sentence-transformers) each;
in-process they are paid once per test session.
"""
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def script_env(root: Path, cache: str) -> dict[str, str]:
    """Environment of a pipeline run: outputs and the model cache in temporary folders, one thread, offline."""
    return {"GRPO_OUTPUT_ROOT": str(root / "outputs"), "GRPO_CACHE_DIR": cache, "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def model_cache(tmp_path_factory) -> str:
    """One tiny-llama cache for every pipeline test of the session (or $GRPO_TEST_CACHE)."""
    return os.environ.get("GRPO_TEST_CACHE", str(tmp_path_factory.getbasetemp() / "model-cache"))


def run_subprocess(script: str, *args, env: dict[str, str]) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args)], env={**os.environ, **env},
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def run_in_process(script: str, *args, env: dict[str, str], monkeypatch, capsys):
    """Run `scripts/<script>` as `__main__` in this process; returns captured (out, err); asserts success."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
    capsys.readouterr()
    try:
        runpy.run_path(str(ROOT / "scripts" / script), run_name="__main__")
    except SystemExit as e:  # cli_main exits only on errors
        pytest.fail(f"{script} exited with {e.code}: {capsys.readouterr().err[-3000:]}")
    return capsys.readouterr()


def run_bad_input(script: str, *args, tmp_path: Path, monkeypatch, capsys) -> str:
    """Run a script on bad input in-process; assert exit 2, one `error:` line and no outputs; return that line."""
    monkeypatch.setenv("GRPO_OUTPUT_ROOT", str(tmp_path / "outputs"))
    monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "scripts" / script), run_name="__main__")
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and last.startswith("error:") and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "outputs").exists()  # nothing written for a run that never started
    return last

"""Runs that protect the user's work (issue #14 items 2-7): scripts/train_grpo.py in a subprocess on tiny-llama.

- one run per folder: a fresh run refuses a folder that holds a run, --overwrite replaces it, a lock stops a
  second run at once and dies with its holder (item 2);
- --resume refuses changes to what is trained, applies the rest and records each leg's settings (item 3);
- damaged checkpoints are found by their manifest: the newest intact one is resumed, on every rank (item 4);
- SIGTERM saves the last step and exits 143 (item 5);
- a full disk is one line naming the checkpoint, and no part of it is kept (item 6);
- outputs follow the umask (item 7).
"""
import contextlib
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grpo import manifest
from grpo.checkpoint import newest_intact
from grpo.run import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_grpo.py"
TINY = ["--model", "tiny-llama", "--task", "arithmetic", "--prompts-per-step", "2", "--num-generations", "4",
        "--max-completion-length", "12", "--lora-dropout", "0", "--learning-rate", "1e-2", "--save-steps", "1",
        "--save-total-limit", "5"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """tiny-llama built once for the module (or $GRPO_TEST_CACHE)."""
    from grpo.models import materialise_named_model

    path = os.environ.get("GRPO_TEST_CACHE", str(tmp_path_factory.mktemp("model-cache")))
    materialise_named_model("tiny-llama", cache_dir=path)
    return path


@pytest.fixture()
def env(tmp_path, cache):
    return dict(os.environ, GRPO_OUTPUT_ROOT=str(tmp_path / "outputs"), PYTHONPATH=str(ROOT), GRPO_CACHE_DIR=cache,
                OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def run(args, env, **kw):
    return subprocess.run([sys.executable, str(SCRIPT), *TINY, *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600, **kw)


def error_line(out) -> str:
    """The one `error:` line of a failed run (asserting there is exactly one, and no traceback)."""
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    return lines[0]


def steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")]


def checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


# ------------------------------------------------------------------------------------- item 2: one run per folder
def test_a_fresh_run_refuses_a_folder_that_holds_a_run_and_overwrite_replaces_it(env, tmp_path):
    run_dir = tmp_path / "outputs" / "r"
    assert run(["--max-steps", 2, "--run-name", "r"], env).returncode == 0
    config = (run_dir / "config.json").read_text()
    line = error_line(run(["--max-steps", 2, "--run-name", "r", "--learning-rate", "0.5"], env))
    assert "holds a run" in line and all(w in line for w in ("--resume", "--run-name", "--overwrite")), line
    # the old run is untouched: before, its checkpoints were pruned as "older" and its metrics replaced
    assert checkpoints(run_dir) == ["step-000001", "step-000002"] and steps(run_dir) == [1, 2]
    assert (run_dir / "config.json").read_text() == config
    assert "choose one" in error_line(run(["--max-steps", 2, "--run-name", "r", "--resume", "--overwrite"], env))

    (run_dir / "notes.txt").write_text("mine")
    out = run(["--max-steps", 1, "--run-name", "r", "--overwrite"], env)
    assert out.returncode == 0 and "removed the previous run" in out.stderr, out.stderr[-3000:]
    assert checkpoints(run_dir) == ["step-000001"] and steps(run_dir) == [1]
    assert (run_dir / "notes.txt").read_text() == "mine"  # not the run's: kept


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    """A lock held by a live process stops a claim at once, naming its pid; SIGKILL releases it (flock)."""
    from grpo.config import UserError
    from grpo.run import RunSettings
    from grpo.run_claim import claim_run_folder

    folder = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from grpo.run import RunSettings; from grpo.run_claim import claim_run_folder\n"
        f"claim_run_folder({str(folder)!r}, RunSettings(), rank=0); print('held', flush=True); time.sleep(600)")],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"in use by pid {holder.pid} "):
            claim_run_folder(folder, RunSettings(), rank=0)
    finally:
        holder.kill()
        holder.wait()
    assert claim_run_folder(folder, RunSettings(), rank=0).path == folder


# ------------------------------------------------------------------------------------- item 5 (+ the lock, live)
def test_sigterm_saves_the_last_step_and_a_second_run_meanwhile_is_refused(env, tmp_path):
    run_dir = tmp_path / "outputs" / "t"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *TINY, "--max-steps", "500", "--run-name", "t"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len(steps(run_dir) if (run_dir / "metrics.jsonl").exists() else []) < 2:
            time.sleep(0.2)
        second = run(["--max-steps", 500, "--run-name", "t", "--resume"], env)  # passes the checks; the lock stops it
        assert f"in use by pid {proc.pid} " in error_line(second)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    assert proc.returncode == 143 and "interrupted (SIGTERM)" in err, err[-3000:]
    last = steps(run_dir)[-1]
    assert checkpoints(run_dir)[-1] == f"step-{last:06d}"  # the last step run is saved
    assert manifest.problem(run_dir / "checkpoints" / f"step-{last:06d}") is None
    again = run(["--max-steps", last + 1, "--run-name", "t", "--resume"], env)  # the lock went with its holder
    assert again.returncode == 0 and f"at step {last}" in again.stderr, again.stderr[-3000:]
    assert steps(run_dir) == list(range(1, last + 2))


# ------------------------------------------------------------------------------------- item 3: resume settings
def test_resume_refuses_changes_to_what_is_trained_and_applies_and_records_the_rest(env, tmp_path):
    run_dir = tmp_path / "outputs" / "r"
    assert run(["--max-steps", 2, "--run-name", "r"], env).returncode == 0
    line = error_line(run(["--max-steps", 4, "--run-name", "r", "--resume", "--num-generations", 2], env))
    assert "num_generations 4 → 2" in line and "decide" in line, line  # before: trained on with G = 2
    line = error_line(run(["--max-steps", 4, "--run-name", "r", "--resume", "--use-lora", "false"], env))
    assert "use_lora true → false" in line, line  # before: AttributeError

    out = run(["--max-steps", 4, "--run-name", "r", "--resume", "--learning-rate", 0.5], env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "learning_rate 0.01 → 0.5" in out.stderr and "config.resume-1.json" in out.stderr
    lr = {r["step"]: r["lr"] for r in read_metrics(run_dir / "metrics.jsonl")}
    assert lr == {1: 0.01, 2: 0.01, 3: 0.5, 4: 0.5}  # before: 0.01 kept from the optimiser state
    first = json.loads((run_dir / "config.json").read_text())
    leg = json.loads((run_dir / "config.resume-1.json").read_text())
    assert (first["learning_rate"], first["max_steps"]) == (0.01, 2)  # config.json still says how the run started
    assert (leg["learning_rate"], leg["max_steps"], leg["resume"]) == (0.5, 4, True)


# ------------------------------------------------------------------------------------- item 4: damaged checkpoints
def _truncate(f: Path):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _flip(f: Path):
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor data: every loader reads it without complaint
    f.write_bytes(bytes(data))


FAULTS = {  # name -> (damage step-000002, a word of the reason given)
    "truncated safetensors": (lambda c: _truncate(c / "model" / "adapter_model.safetensors"), "bytes"),
    "empty safetensors": (lambda c: (c / "model" / "adapter_model.safetensors").write_bytes(b""), "bytes"),
    "truncated trainer_state.pt": (lambda c: _truncate(c / "trainer_state.pt"), "trainer_state.pt"),
    "missing trainer_state.pt": (lambda c: (c / "trainer_state.pt").unlink(), "missing"),
    "empty step folder": (lambda c: [shutil.rmtree(c), c.mkdir()], "no manifest.json"),
    "flipped bytes in the weights": (lambda c: _flip(c / "model" / "adapter_model.safetensors"), "sha256"),
    "flipped bytes in trainer_state.pt": (lambda c: _flip(c / "trainer_state.pt"), "sha256"),
    "missing adapter_config.json": (lambda c: (c / "model" / "adapter_config.json").unlink(), "missing"),
}


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, cache):
    """A run folder with step-000001 and step-000002, written by the script."""
    root = tmp_path_factory.mktemp("two")
    env = dict(os.environ, GRPO_OUTPUT_ROOT=str(root), PYTHONPATH=str(ROOT), GRPO_CACHE_DIR=cache, OMP_NUM_THREADS="1")
    out = run(["--max-steps", 2, "--run-name", "r"], env)
    assert out.returncode == 0, out.stderr[-3000:]
    return root / "r"


@pytest.mark.parametrize("fault", FAULTS)
def test_each_damaged_checkpoint_is_found_and_passed_over_for_the_previous_one(fault, two_checkpoints, tmp_path):
    run_dir = Path(shutil.copytree(two_checkpoints, tmp_path / "r"))
    damage, reason = FAULTS[fault]
    damage(run_dir / "checkpoints" / "step-000002")
    ckpt, skipped = newest_intact(run_dir / "checkpoints")
    assert ckpt == run_dir / "checkpoints" / "step-000001"
    assert [p.name for p, _ in skipped] == ["step-000002"] and reason in skipped[0][1], skipped


def test_resume_falls_back_to_the_newest_intact_checkpoint_and_removes_leftovers(env, tmp_path, two_checkpoints):
    run_dir = Path(shutil.copytree(two_checkpoints, tmp_path / "outputs" / "r"))
    _flip(run_dir / "checkpoints" / "step-000002" / "model" / "adapter_model.safetensors")  # before: loaded silently
    leftovers = [run_dir / "checkpoints" / ".step-000003.4242-0123abcd.tmp", run_dir / ".final.4242-0123abcd.tmp"]
    for p in leftovers:  # what a kill during a save leaves
        (p / "model").mkdir(parents=True)
    (run_dir / ".config.json.4242-0123abcd.tmp").write_text("{")
    out = run(["--max-steps", 3, "--run-name", "r", "--resume"], env)
    assert out.returncode == 0, out.stderr[-3000:]
    skips = [line for line in out.stderr.splitlines() if line.startswith("--resume: skipped")]
    assert len(skips) == 1 and "step-000002" in skips[0] and "sha256" in skips[0], out.stderr[-3000:]
    assert "step-000001 at step 1" in out.stderr
    assert steps(run_dir) == [1, 2, 3]
    assert checkpoints(run_dir) == ["step-000001", "step-000002", "step-000002.damaged", "step-000003"]
    assert not [p.name for p in run_dir.rglob(".*") if p.name != ".lock"]


def test_resume_stops_with_one_line_when_no_checkpoint_is_intact(env, tmp_path, two_checkpoints):
    run_dir = Path(shutil.copytree(two_checkpoints, tmp_path / "outputs" / "r"))
    FAULTS["empty step folder"][0](run_dir / "checkpoints" / "step-000002")
    FAULTS["truncated trainer_state.pt"][0](run_dir / "checkpoints" / "step-000001")
    line = error_line(run(["--max-steps", 3, "--run-name", "r", "--resume"], env))
    assert "no intact checkpoint" in line and "step-000001" in line and "step-000002" in line, line
    assert checkpoints(run_dir) == ["step-000001", "step-000002"]  # nothing set aside, nothing started


def test_every_rank_resumes_from_the_checkpoint_rank_0_falls_back_to(env, tmp_path, two_checkpoints):
    run_dir = Path(shutil.copytree(two_checkpoints, tmp_path / "outputs" / "r"))
    _truncate(run_dir / "checkpoints" / "step-000002" / "trainer_state.pt")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT), *TINY,
           "--prompts-per-step", "4", "--max-steps", "3", "--run-name", "r", "--resume"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stderr.count("skipped step-000002") == 1 and "step-000001 at step 1" in out.stderr
    assert steps(run_dir) == [1, 2, 3]
    info = json.loads((run_dir / "checkpoints" / "step-000003" / "trainer_state.json").read_text())
    assert len(info["trainable_sha256"]) == 2 and len(set(info["trainable_sha256"])) == 1  # same weights on both


# ------------------------------------------------------------------------------------- item 6: disk full
@contextlib.contextmanager
def small_disk(folder: Path, size_kb: int):
    """A tmpfs of `size_kb` at `folder` where this machine allows mounting one (yields "tmpfs"); elsewhere
    yields a preexec_fn limiting each file to `size_kb` (EFBIG, "File too large": the same failed write)."""
    folder.mkdir(parents=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)], capture_output=True).returncode == 0
    if mounted:
        try:
            yield None
        finally:
            subprocess.run(["umount", str(folder)], check=True)
        return

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (size_kb * 1024, size_kb * 1024))

    yield limit


@pytest.mark.parametrize("size_kb, writer", [(100, "safetensors"), (200, "torch.save")])
def test_a_full_disk_stops_with_one_line_naming_the_checkpoint_and_keeps_no_part_of_it(env, tmp_path, size_kb,
                                                                                         writer):
    # tiny-llama's checkpoint: the adapter (134 kB, safetensors) first, then trainer_state.pt (300 kB, torch.save)
    disk = tmp_path / "disk"
    with small_disk(disk, size_kb) as preexec:
        out = run(["--max-steps", 2, "--run-name", "r"], dict(env, GRPO_OUTPUT_ROOT=str(disk)), preexec_fn=preexec)
        line = error_line(out)  # before: SafetensorError / "unexpected pos" tracebacks
        assert f"cannot write {disk / 'r' / 'checkpoints' / 'step-000001'}:" in line, line
        assert "No space left on device" in line or "File too large" in line, line
        assert checkpoints(disk / "r") == []  # no partial checkpoint, no temporary left
        assert steps(disk / "r") == [1]


def test_a_full_disk_while_logging_is_one_error_naming_the_metrics_file(tmp_path):
    import errno

    from grpo.run import MetricsWriter, WriteError

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    writer.log(1, {"reward": 1.0})
    writer._file = FullDisk(writer._file)
    with pytest.raises(WriteError, match=f"cannot write {tmp_path / 'metrics.jsonl'}: No space left on device"):
        writer.log(2, {"reward": 2.0})
    writer.close()
    assert steps(tmp_path) == [1]


# ------------------------------------------------------------------------------------- item 7: umask
def test_outputs_follow_the_umask(env, tmp_path):
    run_dir = tmp_path / "outputs" / "r"
    umask = lambda: os.umask(0o002)  # noqa: E731  group-writable: 0664 files, 0775 folders
    assert run(["--max-steps", 1, "--run-name", "r"], env, preexec_fn=umask).returncode == 0
    out = run(["--max-steps", 2, "--run-name", "r", "--resume"], env, preexec_fn=umask)
    assert out.returncode == 0, out.stderr[-3000:]
    wrong = {}
    for p in [run_dir, *run_dir.rglob("*")]:
        want = 0o775 if p.is_dir() else 0o664
        if stat.S_IMODE(p.stat().st_mode) != want:
            wrong[str(p.relative_to(run_dir))] = oct(stat.S_IMODE(p.stat().st_mode))
    assert not wrong, wrong  # before: config.json, final/, checkpoints, metrics.jsonl after resume 0600 / 0700

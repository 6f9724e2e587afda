"""Run outputs: atomic writes (modes, full disk), metrics JSONL, run-name resolution, seeding."""
import csv
import errno
import json
import os
import random
import stat
from pathlib import Path

import pytest
import torch

from grpo.run import (MetricsWriter, RunDir, WriteError, atomic_dir, atomic_path, atomic_write_json, markdown_table,
                      read_metrics, resolve_run_path, rng_state, seed_everything, set_rng_state, write_report)


def test_atomic_write_replaces_whole_file_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "sub" / "config.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert sorted(os.listdir(target.parent)) == ["config.json"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "x.json"
    atomic_write_json(target, {"ok": True})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})  # not serialisable: fails before any rename
    assert json.loads(target.read_text()) == {"ok": True}
    assert os.listdir(tmp_path) == ["x.json"]


def test_atomic_path_renames_only_on_success(tmp_path):
    target = tmp_path / "plot.png"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash while writing")
    assert not target.exists() and os.listdir(tmp_path) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"full")
    assert target.read_bytes() == b"full"


def test_atomic_dir_replaces_a_checkpoint_whole(tmp_path):
    ckpt = tmp_path / "step-000001"
    with atomic_dir(ckpt) as tmp:
        (tmp / "a.bin").write_bytes(b"1")
    with pytest.raises(RuntimeError):
        with atomic_dir(ckpt) as tmp:
            (tmp / "a.bin").write_bytes(b"2")
            raise RuntimeError("crash")
    assert (ckpt / "a.bin").read_bytes() == b"1"
    with atomic_dir(ckpt) as tmp:
        (tmp / "b.bin").write_bytes(b"3")
    assert sorted(os.listdir(ckpt)) == ["b.bin"] and os.listdir(tmp_path) == ["step-000001"]


def test_metrics_writer_appends_and_truncates_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(path) as mw:
        for step in range(1, 5):
            mw.log(step, {"reward": torch.tensor(step / 2), "nan": float("nan")})
    with open(path, "a") as f:
        f.write('{"step": 5, "rew')  # torn line from a crash
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]
    assert read_metrics(path)[0] == {"step": 1, "reward": 0.5, "nan": None}
    with MetricsWriter(path, truncate_after_step=2) as mw:
        mw.log(3, {"reward": 9.0})
    assert [(r["step"], r["reward"]) for r in read_metrics(path)] == [(1, 0.5), (2, 1.0), (3, 9.0)]


def test_run_names_resolve_to_the_final_model_of_that_run(tmp_path, monkeypatch):
    monkeypatch.setenv("GRPO_OUTPUT_ROOT", str(tmp_path / "outputs"))
    run = RunDir(tmp_path / "outputs" / "rl_sft_model")
    run.final.mkdir()
    assert resolve_run_path("rl_sft_model") == run.final
    assert resolve_run_path(str(run.path)) == run.final
    assert resolve_run_path("no_such_run") == type(run.path)("no_such_run")


def test_a_run_named_like_a_local_folder_that_holds_no_model_resolves_to_the_run(tmp_path, monkeypatch):
    """The main job's run is `grpo`, and the repository root has the package folder grpo/ (no model in it)."""
    monkeypatch.setenv("GRPO_OUTPUT_ROOT", str(tmp_path / "outputs"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grpo").mkdir()
    (tmp_path / "grpo" / "__init__.py").write_text("")
    assert resolve_run_path("grpo") == Path("grpo")  # no run of that name: the folder, as before
    run = RunDir(tmp_path / "outputs" / "grpo")
    run.final.mkdir()
    assert resolve_run_path("grpo") == run.final
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    RunDir(tmp_path / "outputs" / "model").final.mkdir()
    assert resolve_run_path("model") == Path("model")  # a local model folder still wins over a run


def test_latest_checkpoint_ignores_temporaries(tmp_path):
    run = RunDir(tmp_path / "r")
    run.checkpoint(3).mkdir()
    run.checkpoint(12).mkdir()
    (run.checkpoints / ".step-000020.abc.tmp").mkdir()
    (run.checkpoints / "step-000030.damaged").mkdir()  # set aside on resume (grpo.checkpoint [D6])
    assert run.latest_checkpoint() == run.checkpoint(12)
    run.checkpoint(999_999).mkdir()
    run.checkpoint(1_000_000).mkdir()  # seven digits: by name it would sort before step-999999
    assert run.latest_checkpoint() == run.checkpoint(1_000_000)


@pytest.fixture()
def umask_002():
    old = os.umask(0o002)
    yield
    os.umask(old)


def test_atomic_writes_follow_the_umask(tmp_path, umask_002):
    """mkstemp/mkdtemp made every atomic output 0600/0700; safetensors writes 0600 itself (issue #14 item 7)."""
    from safetensors.torch import save_file

    atomic_write_json(tmp_path / "config.json", {"a": 1})
    with atomic_dir(tmp_path / "final") as tmp:
        (tmp / "sub").mkdir()
        save_file({"w": torch.zeros(2)}, str(tmp / "sub" / "w.safetensors"))
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [*tmp_path.rglob("*")]}
    assert modes == {"config.json": 0o664, "final": 0o775, "sub": 0o775, "w.safetensors": 0o664}


def test_a_full_disk_in_an_atomic_dir_is_one_error_naming_it_and_leaves_nothing(tmp_path):
    with pytest.raises(WriteError, match=f"cannot write {tmp_path / 'step-000001'}: No space left on device"):
        with atomic_dir(tmp_path / "step-000001") as tmp:
            (tmp / "a.bin").write_bytes(b"1")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(WriteError, match="No space left on device"):  # as safetensors (Rust) reports it
        with atomic_dir(tmp_path / "step-000001"):
            raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    with pytest.raises(RuntimeError, match="unrelated"):  # not a storage error: unchanged
        with atomic_dir(tmp_path / "step-000001"):
            raise RuntimeError("unrelated")
    assert os.listdir(tmp_path) == []


def test_rng_state_round_trip_reproduces_draws():
    seed_everything(7)
    state = rng_state()
    a = (random.random(), torch.rand(3))
    set_rng_state(state)
    b = (random.random(), torch.rand(3))
    assert a[0] == b[0] and torch.equal(a[1], b[1])


def test_write_report_writes_md_csv_json_and_no_temporaries(tmp_path):
    rows = [{"framework": "ours", "s": 1.234}, {"framework": "trl", "s": 2.5}]
    text = markdown_table("T", rows, [("framework", "{}"), ("s", "{:.1f}")])
    assert text == "T\n\n| framework | s |\n|---|---|\n| ours | 1.2 |\n| trl | 2.5 |\n"
    write_report(tmp_path / "out", text=text, rows=rows, columns=["framework", "s"],
                 csv_extra={"command": "c"}, payload={"summary": rows})
    assert (tmp_path / "out.md").read_text() == text
    table = list(csv.DictReader(open(tmp_path / "out.csv")))
    assert table == [{"framework": "ours", "s": "1.234", "command": "c"}, {"framework": "trl", "s": "2.5", "command": "c"}]
    assert json.loads((tmp_path / "out.json").read_text()) == {"summary": rows}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.json", "out.md"]

"""Claiming a run folder: one run per folder, a lock while it runs, the settings of every leg, no leftovers.

    check_run_folder(path, s, frozen=...)             every rank, right after the settings are parsed:
                                                      reads a few names and config files, writes nothing
    run = claim_run_folder(path, s, rank=rank, ...)   before the model loads: rank 0 locks, checks again,
                                                      clears (--overwrite), removes leftovers, saves the settings

[C1] A folder holds a run when it has a step-* checkpoint, final/ or a non-empty metrics.jsonl (a
     config.json alone is a run that stopped before its first step; a fresh run may replace it). A fresh
     run refuses such a folder: it used to prune the old run's checkpoints as "older", replace its metrics,
     and a later --resume went on with the old run (issue #14 item 2). The message names the ways on:
     --resume (where the script resumes), another --run-name, or --overwrite.
[C2] --overwrite removes the previous run's files, the layout of grpo.run plus the outputs the script
     names; anything else in the folder is kept and listed.
[C3] A lock: rank 0 holds an exclusive flock on <run>/.lock, which records its pid, host and start time,
     until the process exits. The OS releases it on any exit, even SIGKILL, so no stale lock is left to
     remove by hand. A second run into the folder stops at once, naming the holder. A process that runs
     several scripts in turn (runpy in the tests) keeps its lock between them. flock is advisory, and on
     some network filesystems it excludes only processes of one host.
[C4] --resume compares the settings with the last leg's (config.json, then config.resume-N.json): a change
     to one of `frozen`, the settings that decide what is trained (model and adapter shape, task and
     rewards, group size, loss, the seed that fixes data order and sampling), stops the run with the list
     of changes before anything loads (it used to train on silently, or fail deep inside with an
     AttributeError). Any other change applies and is printed, and the leg's settings are saved as
     config.resume-N.json: config.json keeps describing how the run started (issue #14 item 3).
[C5] Leftovers of a killed write (grpo.atomic [D1]: `.<name>.….tmp` files and folders, `.….old` folders
     of a replace) are removed at the start; the lock guarantees no live run is writing them.
"""
from __future__ import annotations

import dataclasses
import errno
import fnmatch
import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from grpo.atomic import json_default
from grpo.config import UserError
from grpo.run import RunDir, list_checkpoints

LOCK = ".lock"
RUN_FILES = ("config.json", "config.resume-*.json", "metrics.jsonl", "checkpoints", "final", "tb")  # grpo.run layout
MODEL_KEYS = ("model", "dtype", "load_in_4bit", "use_lora", "lora_r", "lora_alpha", "lora_target_modules")
NOT_COMPARED = ("resume", "overwrite", "run_name")  # they differ between legs by design
_LEFTOVER = re.compile(r"\..+\.(tmp(\.\w+)?|old(-\d+)?)")  # [C5] (and the names of earlier versions)
_held: dict[Path, Any] = {}  # run folder → this process's open, locked .lock file [C3]


def run_contents(path: str | os.PathLike) -> list[str]:
    """What makes `path` hold a run [C1], e.g. ["checkpoints step-000002…step-000004", "final/"]; [] if nothing."""
    path = Path(path)
    held = []
    ckpts = list_checkpoints(path / "checkpoints")
    if ckpts:
        held.append(f"checkpoint {ckpts[0].name}" if len(ckpts) == 1 else
                    f"checkpoints {ckpts[0].name}…{ckpts[-1].name}")
    if (path / "final").is_dir():
        held.append("final/")
    if (path / "metrics.jsonl").is_file() and (path / "metrics.jsonl").stat().st_size > 0:
        held.append("metrics.jsonl")
    return held


def check_run_folder(path: str | os.PathLike, settings: Any, *, frozen: tuple[str, ...] = ()) -> None:
    """Raise a UserError (every rank alike) when `settings` may not start in `path` [C1] [C4]; reads only."""
    path = Path(path)
    resume, overwrite = getattr(settings, "resume", False), getattr(settings, "overwrite", False)
    if resume and overwrite:
        raise UserError(f"--resume continues the run in {path} and --overwrite replaces it: choose one",
                        every_rank=True)
    held = run_contents(path)
    if held and not resume and not overwrite:  # [C1]
        ways = ["continue it with --resume"] if hasattr(settings, "resume") else []
        ways += ["choose another --run-name", "replace it with --overwrite"]
        raise UserError(f"{path} holds a run ({', '.join(held)}): {', '.join(ways[:-1])}"
                        f"{',' if len(ways) > 2 else ''} or {ways[-1]}", every_rank=True)
    if resume and list_checkpoints(path / "checkpoints"):  # [C4]
        legs = _legs(path)
        fixed = {k: v for k, v in _changes(legs[-1] if legs else None, settings).items() if k in frozen}
        if fixed:
            raise UserError(f"--resume: {_describe(fixed)} differ{'s' if len(fixed) == 1 else ''} from the run in "
                            f"{path} ({legs[-1].name}), and decide{'s' if len(fixed) == 1 else ''} what is trained. "
                            "Resume with the run's values, or start a new run (another --run-name, or --overwrite)",
                            every_rank=True)


def claim_run_folder(path: str | os.PathLike, settings: Any, *, rank: int, frozen: tuple[str, ...] = (),
                     outputs: tuple[str, ...] = ()) -> RunDir:
    """The run folder, claimed by rank 0 before the model loads: lock [C3], check again under the lock,
    clear on --overwrite [C2], remove leftovers [C5], save this leg's settings [C4]. `outputs`: file
    patterns the script writes beside the layout (removed by --overwrite). Other ranks only open it."""
    path = Path(path)
    if rank != 0:
        return RunDir(path)
    path.mkdir(parents=True, exist_ok=True)
    _lock(path)
    check_run_folder(path, settings, frozen=frozen)  # again: the folder may have changed since the first check
    if getattr(settings, "overwrite", False) and run_contents(path):
        _remove_run(path, (*RUN_FILES, *outputs))
    for folder in (path, path / "checkpoints"):
        _remove_leftovers(folder)
    run = RunDir(path)
    if not (getattr(settings, "resume", False) and list_checkpoints(run.checkpoints)):
        run.save_config(settings)
        return run
    legs = _legs(path)  # [C4] a new leg of the run
    changes = _changes(legs[-1] if legs else None, settings)
    leg = path / f"config.resume-{1 + sum(p.name != 'config.json' for p in legs)}.json"
    run.save_config(settings, leg)
    what = f"changed since the last leg, applied: {_describe(changes)}" if changes else "settings unchanged"
    print(f"--resume: {what} (saved as {leg.name})", file=sys.stderr)
    return run


# ------------------------------------------------------------------------------------- helpers
def _lock(path: Path) -> None:
    """Hold <path>/.lock until this process exits, or raise a UserError naming its holder [C3]."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return
    lock = path / LOCK
    mine = _held.get(path.resolve())
    if mine is not None and lock.exists() and os.path.samestat(os.fstat(mine.fileno()), lock.stat()):
        return
    f = open(lock, "a+", encoding="utf-8")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            raise UserError(f"{path} is in use by {holder}: wait for that run to end, or choose another --run-name")
        print(f"note: cannot lock {lock} ({e.strerror}): a second run into this folder would not be stopped",
              file=sys.stderr)
        return
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    _held[path.resolve()] = f  # kept open: the lock lasts as long as the process


def _legs(path: Path) -> list[Path]:
    """The saved settings of each leg, in order: config.json, config.resume-1.json, … [C4]."""
    resumes = sorted(path.glob("config.resume-*.json"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0))
    return [p for p in (path / "config.json", *resumes) if p.is_file()]


def _changes(leg: Path | None, settings: Any) -> dict[str, tuple[Any, Any]]:
    """key → (value in `leg`, value now) for the settings that differ [C4] (keys only one side has: skipped)."""
    if leg is None:
        return {}
    try:
        before = json.loads(leg.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"--resume: cannot read {leg}: {e}", every_rank=True) from None
    now = json.loads(json.dumps(dataclasses.asdict(settings), default=json_default))  # as saved: lists, not tuples
    return {k: (before[k], v) for k, v in now.items()
            if k in before and k not in NOT_COMPARED and before[k] != v}


def _describe(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} {json.dumps(old)} → {json.dumps(new)}" for k, (old, new) in changes.items())


def _remove_run(path: Path, patterns: tuple[str, ...]) -> None:
    """--overwrite: delete the previous run's files in `path`, keep (and name) anything else [C2]."""
    removed, kept = [], []
    for entry in sorted(path.iterdir()):
        if entry.name == LOCK or _LEFTOVER.fullmatch(entry.name):
            continue
        if any(fnmatch.fnmatchcase(entry.name, p) for p in patterns):
            folder = entry.is_dir() and not entry.is_symlink()
            shutil.rmtree(entry) if folder else entry.unlink()
            removed.append(entry.name + ("/" if folder else ""))
        else:
            kept.append(entry.name)
    print(f"--overwrite: removed the previous run in {path} ({', '.join(removed)})"
          + (f"; kept {', '.join(kept)}" if kept else ""), file=sys.stderr)


def _remove_leftovers(folder: Path) -> None:
    """Delete what killed atomic writes left in `folder` [C5]."""
    gone = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        if _LEFTOVER.fullmatch(entry.name):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            gone.append(entry.name)
    if gone:
        print(f"removed {len(gone)} leftover(s) of an interrupted write in {folder}: {', '.join(gone)}",
              file=sys.stderr)

"""Run outputs: one directory layout, atomic writes, a metrics writer, seeding and progress bars.

Every script writes into one run directory:

    outputs/<run>/
        config.json        the resolved settings (written at start)
        metrics.jsonl      one JSON object per logged step (appended, flushed per line)
        checkpoints/       step-NNNNNN/ folders, each complete before it appears (atomic rename)
        final/             the final model (adapter or full weights) and tokenizer
        ...                script-specific outputs (plots, CSVs), all written atomically

[D1] Atomic writes: content goes to a temporary file in the *same* directory (so `os.replace` is a
     rename on one filesystem), is flushed and fsynced, then renamed over the target. A reader sees
     the old file or the new one, never half of one. Directories use the same idea (`atomic_dir`).
[D2] metrics.jsonl is append-only; each line is written with one `write` call and flushed, so a crash
     loses at most the line being written. On resume, lines with step > the resumed step are dropped
     first, so the file reads as if the run had never stopped.
[D3] metrics.jsonl is strict JSON: a NaN or ±inf metric (a skipped step's gradient norm) is written as
     null, never as the bare NaN / Infinity that Python writes and strict parsers reject.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

OUTPUT_ROOT_ENV = "GRPO_OUTPUT_ROOT"  # where named runs live; default ./outputs


def output_root() -> Path:
    return Path(os.environ.get(OUTPUT_ROOT_ENV, "outputs"))


def run_folder(name: str) -> Path:
    """A run name under outputs/ ($GRPO_OUTPUT_ROOT), or a path when it contains a slash (`outputs/sega-demo`)."""
    return Path(name) if "/" in name or "\\" in name else output_root() / name


def output_file(name: str, folder: str) -> Path:
    """Where a script writes `name`: a bare file name goes to outputs/<folder>/, a path is used as given."""
    path = Path(name).expanduser()
    return output_root() / folder / path.name if path.parent == Path(".") else path


@dataclass
class RunSettings:
    """Where a training run writes, how often it logs and saves, and how it resumes (grpo.loop)."""

    run_name: str = "run"
    """output folder: a name under outputs/ ($GRPO_OUTPUT_ROOT) or a path containing '/'"""
    seed: int = 0
    """random seed (data order, sampling, LoRA initialisation)"""
    logging_steps: int = 1
    """log metrics every N steps"""
    save_steps: int = 20
    """write a resumable checkpoint every N steps (0 = only at the end)"""
    save_total_limit: int = 2
    """keep only the newest N checkpoints"""
    resume: bool = False
    """continue from the newest checkpoint of this run"""
    tensorboard: bool = False
    """also write TensorBoard event files"""


# ------------------------------------------------------------------------------------- atomic writes
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically [D1]; parent directories are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def markdown_table(title: str, rows: Iterable[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A title, then a Markdown table with one row per dict; `columns` = (key, format spec) pairs."""
    lines = [title, "", "| " + " | ".join(c for c, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f.format(r[c]) for c, f in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_report(out: str | os.PathLike, *, text: str, rows: Iterable[dict[str, Any]], columns: list[str],
                 csv_extra: dict[str, Any], payload: dict[str, Any]) -> None:
    """A benchmark's outputs, each atomically: <out>.md (`text`), <out>.csv (`columns` of every row plus
    the `csv_extra` values, e.g. versions and command) and <out>.json (`payload`)."""
    import csv

    out = Path(out)
    atomic_write_text(out.with_suffix(".md"), text)
    with atomic_path(out.with_suffix(".csv")) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*columns, *csv_extra])
        w.writeheader()
        for r in rows:
            w.writerow({**{c: r[c] for c in columns}, **csv_extra})
    atomic_write_json(out.with_suffix(".json"), payload)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; rename it onto `path` only if the block succeeds.

    For writers that insist on a file name (matplotlib's savefig, torch.save, CSV writers) [D1].
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp{path.suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` whole [D1].

    An existing `path` is moved aside first and removed only after the new one is in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.dtype):
        return str(obj).removeprefix("torch.")
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ------------------------------------------------------------------------------------- run directory
class RunDir:
    """The output directory of one run (see the module docstring for its layout)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final(self) -> Path:
        return self.path / "final"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:06d}"

    def latest_checkpoint(self) -> Path | None:
        done = sorted(p for p in self.checkpoints.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
        return done[-1] if done else None

    def save_config(self, config: Any) -> Path:
        from dataclasses import asdict, is_dataclass

        return atomic_write_json(self.config_file, asdict(config) if is_dataclass(config) else config)


def resolve_run_path(name_or_path: str | os.PathLike) -> Path:
    """A run name (`rl_sft_model`) or a path → a directory. Names resolve under `output_root()`.

    A path that exists wins; otherwise `outputs/<name>`, and inside a run the `final/` model if any.
    """
    p = Path(name_or_path).expanduser()
    for cand in (p, output_root() / p):
        if cand.is_dir():
            return cand / "final" if (cand / "final").is_dir() else cand
    return p


# ------------------------------------------------------------------------------------- metrics
class MetricsWriter:
    """Append-only JSONL metrics [D2], with an optional TensorBoard mirror."""

    def __init__(self, path: str | os.PathLike, *, tensorboard_dir: str | os.PathLike | None = None,
                 truncate_after_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after_step is not None and self.path.exists():  # [D2]
            kept = [r for r in read_metrics(self.path) if r.get("step", -1) <= truncate_after_step]
            atomic_write_text(self.path, "".join(json.dumps(r, default=_json_default) + "\n" for r in kept))
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # tensorboard is the optional extra `[tensorboard]`
                raise SystemExit("error: --tensorboard needs `pip install tensorboard`") from e
            self._tb = SummaryWriter(str(tensorboard_dir))

    def log(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        row = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row, default=_json_default, allow_nan=False) + "\n")  # one write [D2] [D3]
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, step)
        return row

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _scalar(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.detach().float().item() if v.numel() == 1 else v.detach().tolist()
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, list):
        return [_scalar(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None  # [D3] JSON has neither NaN nor Infinity
    return v


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete lines of a metrics.jsonl (a torn last line from a crash is skipped)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


# ------------------------------------------------------------------------------------- seeding, progress
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG state a resumed run needs to continue bit-identically."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def progress(iterable: Iterable | None = None, **kwargs):
    """A tqdm progress bar on stderr, quiet when not a terminal unless GRPO_PROGRESS=1."""
    from tqdm.auto import tqdm

    disable = kwargs.pop("disable", None)
    if disable is None:
        disable = not (sys.stderr.isatty() or os.environ.get("GRPO_PROGRESS") == "1")
    return tqdm(iterable, disable=disable, dynamic_ncols=True, **kwargs)

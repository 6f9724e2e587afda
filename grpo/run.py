"""Run outputs: one directory layout, a metrics writer, seeding and progress bars.

Every script writes into one run directory:

    outputs/<run>/
        config.json          the resolved settings as the run started (written at start, never rewritten)
        config.resume-N.json the settings of the N-th `--resume` leg (grpo.run_claim [C4])
        metrics.jsonl        one JSON object per logged step (appended, flushed per line)
        checkpoints/         step-NNNNNN/ folders, each complete before it appears (atomic rename) and
                             carrying a manifest of checksums (grpo.manifest)
        final/               the final model (adapter or full weights) and tokenizer
        .lock                held by the process writing the run (grpo.run_claim [C3])
        ...                  script-specific outputs (plots, CSVs), all written atomically

[D1] Atomic writes (grpo.atomic, re-exported here): a reader sees the old file or the new one, never
     half of one; modes follow the umask; a full disk is one line naming the path.
[D2] metrics.jsonl is append-only; each line is written with one `write` call and flushed, so a crash
     loses at most the line being written. On resume, lines with step > the resumed step are dropped
     first, so the file reads as if the run had never stopped.
[D3] metrics.jsonl is strict JSON: a NaN or ±inf metric (a skipped step's gradient norm) is written as
     null, never as the bare NaN / Infinity that Python writes and strict parsers reject.
[D4] Only folders named exactly step-<digits> are checkpoints: temporaries (`.step-….tmp`) and
     checkpoints set aside as damaged (`step-….damaged`, grpo.checkpoint [D6]) are neither resumed nor
     counted when old checkpoints are pruned.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from grpo.atomic import (WriteError, atomic_dir, atomic_path, atomic_write_bytes,  # noqa: F401  (re-exported)
                         atomic_write_json, atomic_write_text, json_default, storage_errors_name, write_failure)

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
    """continue from the newest intact checkpoint of this run (settings that decide what is trained must match)"""
    overwrite: bool = False
    """replace the run already in this folder (without it a fresh run refuses a folder that holds one)"""
    tensorboard: bool = False
    """also write TensorBoard event files"""

    def validate(self) -> None:
        """Ranges, checked before anything loads (grpo.config [D9])."""
        from grpo.config import SEED_RANGE, at_least, path_name, within

        path_name(self, "run_name")  # '' or '..' would write into the outputs root or above it
        within(self, "seed", *SEED_RANGE)
        at_least(self, "logging_steps", 1)
        at_least(self, "save_steps", 0, why="0 = only at the end")
        at_least(self, "save_total_limit", 1)


# ------------------------------------------------------------------------------------- reports
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
        done = list_checkpoints(self.checkpoints)
        return done[-1] if done else None

    def save_config(self, config: Any, path: str | os.PathLike | None = None) -> Path:
        from dataclasses import asdict, is_dataclass

        return atomic_write_json(path or self.config_file, asdict(config) if is_dataclass(config) else config)


STEP_FOLDER = re.compile(r"step-\d+")


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The checkpoint folders in `folder`, oldest first [D4]."""
    folder = Path(folder)
    found = [p for p in folder.iterdir() if STEP_FOLDER.fullmatch(p.name) and p.is_dir()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.removeprefix("step-")))


def resolve_run_path(name_or_path: str | os.PathLike) -> Path:
    """A run name (`rl_sft_model`) or a path → a directory. Names resolve under `output_root()`.

    A path that exists wins; otherwise `outputs/<name>`, and inside a run the `final/` model if any. An
    existing folder that is neither a run nor a model (no final/, config.json or adapter_config.json: the
    package folder grpo/ when the main job's run `grpo` is named from the repository root) gives way to a
    run of that name.
    """
    p = Path(name_or_path).expanduser()
    found = [cand for cand in (p, output_root() / p) if cand.is_dir()]
    for cand in found:
        if (cand / "final").is_dir():
            return cand / "final"
        if (cand / "config.json").is_file() or (cand / "adapter_config.json").is_file():
            return cand
    return found[0] if found else p


# ------------------------------------------------------------------------------------- metrics
class MetricsWriter:
    """Append-only JSONL metrics [D2], with an optional TensorBoard mirror."""

    def __init__(self, path: str | os.PathLike, *, tensorboard_dir: str | os.PathLike | None = None,
                 truncate_after_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after_step is not None and self.path.exists():  # [D2]
            kept = [r for r in read_metrics(self.path) if r.get("step", -1) <= truncate_after_step]
            atomic_write_text(self.path, "".join(json.dumps(r, default=json_default) + "\n" for r in kept))
        self._failed = False
        try:
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise WriteError(self.path, write_failure(e) or str(e)) from None
        self._tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # tensorboard is the optional extra `[tensorboard]`
                raise SystemExit("error: --tensorboard needs `pip install tensorboard`") from e
            self._tb = SummaryWriter(str(tensorboard_dir))

    def log(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        row = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
        try:
            with storage_errors_name(self.path):  # a full disk: one line naming the file (grpo.atomic [D3])
                self._file.write(json.dumps(row, default=json_default, allow_nan=False) + "\n")  # [D2] [D3]
                self._file.flush()
        except WriteError:
            self._failed = True
            raise
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, step)
        return row

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            if not self._failed:  # after a failed write, closing retries the same lost line: already reported
                raise
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

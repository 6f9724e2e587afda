"""Atomic writes: a file or folder is the old one or the new one, never half; modes follow the umask;
a failed write is one line naming the path and the cause.

[D1] Content goes to a temporary file in the *same* directory (so `os.replace` is a rename on one
     filesystem), is flushed and fsynced, then renamed over the target. A reader sees the old file or
     the new one, never half of one. Folders use the same idea (`atomic_dir`). Temporaries are named
     `.<name>.<pid>-<hex>.tmp` (and `.old` for a folder being replaced), so a run can recognise and remove
     the leftovers of a killed write (grpo.run_claim [C5]).
[D2] Modes follow the user's umask like any other file (issue #14 item 7): temporaries are created with
     `os.open(..., 0o666)` / `os.mkdir(..., 0o777)`, which the umask trims (tempfile.mkstemp / mkdtemp make
     them 0600 / 0700, and the rename kept that). Writers inside `atomic_dir` that create files privately
     (safetensors writes 0600) are brought to the umask's modes before the rename.
[D3] A write that fails for a reason of the machine (disk full, quota, file-size limit, read-only
     filesystem, permissions) raises `WriteError`, a UserError printed by cli_main as one line
     (`error: cannot write …/step-000040: No space left on device`), and nothing of the target is left
     behind (issue #14 item 6). safetensors reports the OS error inside its own exception's text
     ("… (os error 28)"); `write_failure` reads it from there.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from grpo.config import UserError

# errors of the storage, not of the program: reported as one line [D3]
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM}
_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")  # how safetensors (Rust) reports one


class WriteError(UserError):
    """Writing `path` failed for a reason of the machine, `cause` (e.g. "No space left on device") [D3]."""

    def __init__(self, path: str | os.PathLike, cause: str):
        super().__init__(f"cannot write {path}: {cause}")
        self.path, self.cause = Path(path), cause


def write_failure(e: BaseException) -> str | None:
    """The storage cause of a failed write [D3], or None when `e` is some other error (re-raised as is)."""
    if isinstance(e, WriteError):
        return e.cause
    if isinstance(e, OSError):
        return (e.strerror or str(e)) if e.errno in STORAGE_ERRNOS else None
    m = _OS_ERROR_IN_TEXT.search(str(e))
    if m and int(m.group(1)) in STORAGE_ERRNOS:
        return os.strerror(int(m.group(1)))
    return None


@contextlib.contextmanager
def storage_errors_name(path: str | os.PathLike) -> Iterator[None]:
    """Within the block, a storage failure becomes WriteError(path, cause) [D3]; any other error is untouched."""
    try:
        yield
    except Exception as e:
        cause = write_failure(e)
        if cause is None:
            raise
        raise WriteError(path, cause) from None


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc/self/status) [D2]."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o077)  # elsewhere: set and restore; 077 meanwhile makes a racing file stricter, never looser
    os.umask(mask)
    return mask


def _temporary(path: Path, kind: str = "tmp", suffix: str = "") -> Path:
    return path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.{kind}{suffix}"  # [D1]


def _follow_umask(folder: Path) -> None:
    """Set every file and folder under `folder` to 0666 / 0777 less the umask [D2]."""
    mask = current_umask()
    os.chmod(folder, 0o777 & ~mask)
    for parent, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(parent, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(parent, name), 0o666 & ~mask)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically [D1] with the umask's mode [D2]; parent directories are created.

    Raises WriteError when the storage refuses [D3]; `path` is then as it was.
    """
    path = Path(path)
    tmp = _temporary(path)
    with storage_errors_name(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # [D2] the umask applies
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
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; rename it onto `path` only if the block succeeds.

    For writers that insist on a file name (matplotlib's savefig, torch.save, CSV writers) [D1] [D3].
    """
    path = Path(path)
    tmp = _temporary(path, suffix=path.suffix)  # the suffix kept: savefig picks the format from it
    try:
        with storage_errors_name(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` whole [D1].

    An existing `path` is moved aside first and removed only after the new one is in place. Modes follow
    the umask [D2]; a storage failure raises WriteError naming `path`, and nothing of it is kept [D3].
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        with storage_errors_name(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(tmp, 0o777)  # [D2]
            yield tmp
            _follow_umask(tmp)  # [D2]
            old = _temporary(path, "old") if path.exists() else None
            if old is not None:
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def json_default(obj: Any) -> Any:
    """JSON for the values our configs and metrics hold: tensors, NumPy scalars, paths, dtypes."""
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.dtype):
        return str(obj).removeprefix("torch.")
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

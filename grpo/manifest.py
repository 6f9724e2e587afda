"""Checkpoint manifests: the size and sha256 of every file, written last, checked before a resume.

    checkpoints/step-000040/manifest.json
        {"format": 1, "files": {"model/adapter_model.safetensors": {"bytes": 134616, "sha256": "9f…"}, …}}

[M1] The manifest is written last, inside the checkpoint's temporary folder (grpo.atomic.atomic_dir):
     a checkpoint with a manifest is one whose every file was written before the folder appeared.
[M2] `problem(folder)` names the first thing wrong, or returns None: no manifest (an empty step-* folder,
     a copy cut short), an unreadable manifest, a listed file missing, a size that differs (a truncated
     or emptied file; sizes are checked first, as they cost nothing), a sha256 that differs (flipped
     bytes, which the loaders read without complaint: issue #14 item 4). Files not listed are ignored,
     so a note left beside the weights does not damage a checkpoint.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from grpo.atomic import atomic_write_json

MANIFEST = "manifest.json"
FORMAT = 1


def sha256_file(path: Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str | Path) -> Path:
    """Record the size and sha256 of every file under `folder` in folder/manifest.json [M1]."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files}
    return atomic_write_json(folder / MANIFEST, {"format": FORMAT, "files": entries})


def problem(folder: str | Path) -> str | None:
    """What is wrong with the checkpoint `folder`, in a few words, or None when it is intact [M2]."""
    folder = Path(folder)
    if not folder.is_dir():
        return "no such folder"
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        sizes = {name: int(entry["bytes"]) for name, entry in files.items()}
    except FileNotFoundError:
        return f"no {MANIFEST} (the save did not finish, or the folder was copied in part)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{MANIFEST} is unreadable ({type(e).__name__})"
    if not files:
        return f"{MANIFEST} lists no file"
    for name, size in sizes.items():  # sizes first: a truncated file is found without reading anything
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {size}"
    for name, entry in files.items():
        if sha256_file(folder / name) != entry.get("sha256"):
            return f"{name} does not match its sha256 (the bytes changed after the save)"
    return None

"""The project's C++ CPU kernels: compiled on first use with the system's compiler, loaded with ctypes.

    fn, why = load_function("few_rows_gemm.cpp", "few_rows_mm", argtypes, switch="KERNELS_FEW_ROWS")
                                                # the C function (a ctypes function), or None and why not

Used by kernels/few_rows.py (the decoding step's matmuls) and kernels/decode_attention.py (its attention).
[B1] Build: on first use a source of this folder is compiled with the system's C++ compiler (CXX, else g++, c++
     or clang++; FLAGS, about a second) into KERNELS_CACHE (default $XDG_CACHE_HOME/grpo-sega or
     ~/.cache/grpo-sega), named by the source's stem and a hash of the source, flags and compiler, written to a
     temporary name and renamed, so ranks building at once do not read a half-written file. No torch headers,
     no ninja.
[B2] Not available, with the reason in one line: the source's switch set to 0 (e.g. KERNELS_FEW_ROWS=0), not
     x86-64 Linux, a CPU without AVX-512 (torch.backends.cpu.get_cpu_capability()), no compiler, a failed
     build. Each caller then takes torch's path and says so.
[B3] OpenMP: the library is loaded after torch, whose libgomp has the same soname, so a kernel's parallel loop
     runs in torch's own OpenMP runtime and no second thread pool competes for the cores
     (tests/test_kernels_few_rows.py reads /proc/self/maps).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch

FLAGS = ("-O3", "-fopenmp", "-mavx512f", "-mfma", "-std=c++17", "-shared", "-fPIC")  # [B1]


def cache_dir() -> Path:
    root = os.environ.get("KERNELS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "grpo-sega")
    return Path(root)


def _compiler() -> str | None:
    return os.environ.get("CXX") or next(filter(None, map(shutil.which, ("g++", "c++", "clang++"))), None)


def _build(source: Path, cxx: str) -> Path:
    """The shared library of this source, flags and compiler, compiled once into the cache [B1]."""
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except OSError as err:
        raise RuntimeError(f"cannot run the C++ compiler {cxx}: {err.strerror}") from None
    key = hashlib.sha256("\0".join([source.read_text(), *FLAGS, cxx, version]).encode()).hexdigest()[:16]
    lib = cache_dir() / f"{source.stem}-{key}.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        tmp = lib.with_name(f".{lib.name}.{os.getpid()}.tmp")
        done = subprocess.run([cxx, *FLAGS, str(source), "-o", str(tmp)], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{Path(cxx).name} could not build {source.name}: {last}")
        os.replace(tmp, lib)
    return lib


def load_cpp(source_name: str, *, switch: str) -> tuple[ctypes.CDLL | None, str | None]:
    """(the loaded library, None), or (None, why not in one line) [B2], for a source in this folder."""
    if os.environ.get(switch, "1") == "0":
        return None, f"switched off ({switch}=0)"
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        return None, f"not an x86-64 Linux machine ({sys.platform}, {platform.machine()})"
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return None, f"this CPU runs torch at {torch.backends.cpu.get_cpu_capability()}, not AVX512"
    if (cxx := _compiler()) is None:
        return None, "no C++ compiler found (set CXX, or install g++)"
    try:
        return ctypes.CDLL(str(_build(Path(__file__).with_name(source_name), cxx))), None
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        return None, str(err).splitlines()[0]


def load_function(source_name: str, name: str, argtypes: list, *, switch: str) -> tuple[object | None, str | None]:
    """(the C function `name` of the source's library, returning void, with these ctypes argument types, None),
    or (None, why not in one line) [B2]."""
    lib, why = load_cpp(source_name, switch=switch)
    if lib is None:
        return None, why
    fn = getattr(lib, name)
    fn.argtypes, fn.restype = argtypes, None
    return fn, None

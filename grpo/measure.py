"""Measuring a process for the benchmarks: peak resident memory (Linux VmHWM), package versions, CPU name.

[D1] VmHWM (the RSS high-water mark) is reset to the current RSS by writing "5" to /proc/self/clear_refs;
     that also resets what getrusage's ru_maxrss reports for a live process, so `PeakRSS` keeps the overall
     peak itself, folding in the old mark before each reset. Off Linux the marks read as NaN.
"""
from __future__ import annotations

import math
import os
import platform
from pathlib import Path


def proc_status_mb(key: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM, …) in MiB; NaN where there is none."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:  # not Linux
        return math.nan
    for line in status.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return math.nan


def reset_peak_rss() -> bool:
    """VmHWM := the current RSS [D1]; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """High-water marks of this process's RSS, per phase (`start` … `read`) and overall [D1]."""

    def __init__(self):
        self.process, self.steps, self.in_steps, self.frozen = 0.0, 0.0, False, None

    def begin_steps(self) -> None:  # after set-up: from here on marks also count for `steps`
        self.start()
        self.in_steps = True

    def start(self) -> None:
        self.read()
        reset_peak_rss()

    def read(self) -> float:
        mark = proc_status_mb("VmHWM")
        self.process = max(self.process, mark)
        if self.in_steps:
            self.steps = max(self.steps, mark)
        return mark

    def freeze(self) -> None:  # before a profiled step: the profiler's memory is not the trainer's
        self.read()
        self.frozen = self.final()

    def final(self) -> dict[str, float]:
        if self.frozen:
            return self.frozen
        self.read()
        return {"peak_rss_mb": self.process, "steps_peak_rss_mb": self.steps}


def package_versions(packages: tuple[str, ...] = ("torch", "transformers", "peft", "trl", "accelerate")
                     ) -> dict[str, str]:
    """Python, platform, CPU count and each package's installed version ("not installed" when absent)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform(), "cpus": str(os.cpu_count())}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo ("cpu" where there is none)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return "cpu"
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "cpu"

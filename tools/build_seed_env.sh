#!/usr/bin/env bash
# `make seed-libs`: the seed-libraries environment (.venv-seed), where the comparison post's own Python snippets
# run (optimum's GPTQQuantizer on GPTQModel, AutoAWQ) and AutoGPTQ's import failure is shown. Its own virtualenv:
# GPTQModel 7.7.0 needs transformers >= 5.20.2 while the course's .venv pins 5.17. quantedu runs it as a
# subprocess (quantedu.engines.seed_libs, quantedu/engines/_seed_worker.py). Versions: constraints-seed.txt. Prints the time of
# each step; checks the result (imports, and both snippets, fixed, on a tiny random Llama).
# Where the pinned builds do not exist (they are Linux x86_64 wheels: torch 2.13.0+cpu, AutoGPTQ's), it says so,
# writes the reason to $VENV/UNAVAILABLE (quantedu reports it; the seed-library parts skip with it) and succeeds.
set -euo pipefail
VENV=${1:-.venv-seed}
PY=${PYTHON:-python3}
start=$(date +%s)
step=$start
lap() { local now; now=$(date +%s); echo "== seed-libs: $1 ($(( now - step )) s)"; step=$now; }
# shellcheck source=tools/side_env.sh
. "$(dirname "$0")/side_env.sh"
only_linux_x86_64 "$VENV" seed-libs "the seed-libraries environment is pinned to Linux x86_64 builds (torch 2.13.0+cpu, AutoGPTQ 0.7.1's wheel), none for $(uname -s)/$(uname -m), so it is not installed here and the seed-library parts of the course skip. Elsewhere: pip install optimum gptqmodel autoawq"
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q -c constraints-seed.txt)
"$VENV/bin/python" -m pip install -q --upgrade pip
lap "virtualenv $VENV"
# torch first, alone, so that the CPU build is chosen before anything can pull a CUDA one in
# shellcheck disable=SC2086 # SEED_PIP_ARGS is a list of pip options
"${PIP[@]}" ${SEED_PIP_ARGS:-} torch
lap "torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
# transformers + optimum, and what GPTQModel and AutoAWQ import on a CPU (found by importing them: GPTQModel's
# logger needs PyPcre/LogBar, its loader Defuser/TokeNicer/Device-SMI/threadpoolctl, its image path pillow and
# requests; AutoAWQ imports datasets at import time). Not their CUDA-only or unused declarations (triton, torchao,
# maturin, ninja, protobuf, peft, rouge, gekko).
# shellcheck disable=SC2086
"${PIP[@]}" ${SEED_PIP_ARGS:-} transformers optimum accelerate datasets PyPcre LogBar Defuser TokeNicer Device-SMI \
  threadpoolctl pillow requests
lap "transformers, optimum and the libraries' imports"
# --no-deps: GPTQModel declares torch>=2.14.1 (it runs on 2.13), AutoAWQ triton (CUDA only), AutoGPTQ transformers
# 4.x-era packages. GPTQModel is an sdist that pip builds once and caches.
"${PIP[@]}" --no-deps GPTQModel autoawq auto-gptq
lap "GPTQModel, AutoAWQ, AutoGPTQ (--no-deps)"
cuda=$("$VENV/bin/python" -c 'import torch; print(torch.version.cuda)')
if [ "$cuda" != None ]; then
  echo "seed-libs: torch in $VENV is a CUDA build (CUDA $cuda); it must be the CPU build pinned in constraints-seed.txt" >&2
  exit 1
fi
echo "== seed-libs: checking it (imports; both snippets, fixed, on a tiny Llama; GPTQModel compiles its CPU kernels the first time, about a minute)"
log=$(mktemp)
if ! "$VENV/bin/python" quantedu/engines/_seed_worker.py selftest > "$log" 2>&1; then
  tail -40 "$log" >&2
  rm -f "$log"
  exit 1
fi
grep -E '\[seed-libs\]|self-test' "$log" || true
rm -f "$log"
lap "check"
echo "== seed-libs env ready in $(( $(date +%s) - start )) s"

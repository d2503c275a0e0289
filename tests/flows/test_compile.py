"""`sparsecc.compile`: every zoo model x {dense, 50% unstructured, 2:4} to ONNX and
ExecuTorch, with the pattern re-verified in each artifact and parity passed."""

import json

import pytest
import torch
import torch.nn as nn

from sparsecc.backends import InputMismatchError, LoweringError, get_backend
from sparsecc.flows.compile import ParityError, compile
from sparsecc.models import REFERENCE_MODELS, ModelSpec

RECIPES = {
    "dense": None,
    "unstructured50": {"pattern": "unstructured", "sparsity": 0.5},
    "2:4": {"pattern": "2:4"},
}
TARGETS = ["onnx", "executorch"]


def _compile(zoo, name, recipe, out, **kw):
    spec, program = zoo(name)
    kw.setdefault("dense_reference", False)
    return compile(spec, RECIPES[recipe], out, targets=TARGETS, program=program, **kw)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # inside polygraphy
@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_zoo_model_compiles_to_every_target(zoo, tmp_path, name, recipe):
    result = _compile(zoo, name, recipe, tmp_path / "bundle")
    m = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert set(m["targets"]) == set(TARGETS)
    for target, d in m["targets"].items():
        assert d["parity"]["ok"], (target, d["parity"])
        assert len(d["parity"]["cases"]) >= 1
        assert d["pattern_verification"]["ok"], (target, d["pattern_verification"])
        if recipe == "dense":
            assert d["pattern_verification"]["layers"] == []
        else:
            sparse = {r["fqn"] for r in m["sparsity"]["layers"] if r["status"] == "sparse"}
            assert {x["fqn"] for x in d["pattern_verification"]["layers"]} == sparse
        for f in d["artifact"]["files"].values():
            assert (tmp_path / "bundle" / target / f).is_file()
    if recipe == "2:4":
        _assert_tensorrt_eligible_and_polygraphy_agrees(result)
    assert (tmp_path / "bundle" / "program.pt2").is_file()
    assert (tmp_path / "bundle" / "README.md").read_text().startswith("# sparsecc bundle")
    assert result.manifest["inputs"] and all(i["dtype"] for i in result.manifest["inputs"])


def _assert_tensorrt_eligible_and_polygraphy_agrees(result):
    """Every 2:4 layer is TensorRT-eligible in the ONNX file, and polygraphy's checker agrees."""
    import onnx
    from polygraphy.tools.sparse import SparsityPruner

    from sparsecc.backends.onnx import check_nm

    layers = result.manifest["targets"]["onnx"]["pattern_verification"]["layers"]
    assert layers and all(x["eligible"] for x in layers), [x for x in layers if not x["eligible"]]
    model = onnx.load(str(result.targets["onnx"].artifact.path()))
    ours = {e.initializer for e in check_nm(model, 2, 4) if e.eligible}
    pruner = SparsityPruner(model)
    pruner.check()
    assert ours == set(pruner.sparse_tensors)
    provenance = result.targets["onnx"].artifact.meta["provenance"]
    assert {provenance[x["fqn"]]["initializer"] for x in layers} <= ours


def test_dynamic_dims_keep_user_names(zoo, tmp_path):
    result = _compile(zoo, "bert", "2:4", tmp_path / "b")
    assert result.manifest["inputs"][0]["shape"] == ["batch", "seq"]
    assert set(result.manifest["dynamic_dims"]) == {"batch", "seq"}
    assert any("batch=3" in c["inputs"] for c in result.manifest["targets"]["onnx"]["parity"]["cases"])


def test_existing_bundle_is_refused_then_replaced_with_force(zoo, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        _compile(zoo, "mlp", "2:4", out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(FileExistsError, match="not an earlier output of sparsecc"):  # --force replaces bundles only
        _compile(zoo, "mlp", "2:4", out, force=True)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "manifest.json").write_text("{}")  # now an earlier bundle
    _compile(zoo, "mlp", "2:4", out, force=True)
    assert not (out / "keep.txt").exists() and json.loads((out / "manifest.json").read_text())["files"]


# its own op name: two test modules registering one name in a worker leave a dead schema behind
@torch.library.custom_op("sparsecc_test::compile_mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x.sin()


@mystery.register_fake
def _(x):
    return torch.empty_like(x)


class Unlowerable(nn.Module):
    """A custom op with no ONNX translation."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return mystery(self.fc(x))


def test_failed_compile_leaves_nothing_behind(tmp_path):
    spec = ModelSpec("unlowerable", Unlowerable(), (torch.randn(2, 8),))
    with pytest.raises(LoweringError, match="mystery"):
        compile(spec, RECIPES["2:4"], tmp_path / "b", targets=["onnx"])
    assert list(tmp_path.iterdir()) == []


def test_parity_failure_fails_the_compile(zoo, tmp_path, monkeypatch):
    backend_cls = type(get_backend("onnx"))
    real_load = backend_cls.load

    def corrupt_load(self, artifact, threads=None):
        runner = real_load(self, artifact, threads)
        return lambda inputs: [o + 1e-2 for o in runner(inputs)]

    monkeypatch.setattr(backend_cls, "load", corrupt_load)
    with pytest.raises(ParityError, match="onnx: outputs differ"):
        _compile(zoo, "mlp", "2:4", tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_unknown_target_fails_before_any_work(tmp_path):
    spec = ModelSpec("u", Unlowerable(), (torch.randn(2, 8),))
    with pytest.raises(KeyError, match="unknown backend 'tflite'"):
        compile(spec, None, tmp_path / "b", targets=["tflite"])


@pytest.mark.parametrize("target", TARGETS)
def test_run_with_wrong_inputs_names_the_expected_spec(zoo, tmp_path, target):
    result = _compile(zoo, "mlp", "2:4", tmp_path / "b")
    backend, artifact = get_backend(target), result.targets[target].artifact
    with pytest.raises(InputMismatchError, match=r"x: float32\[batch, 64\]"):
        backend.run(artifact, [torch.randn(2, 63)])
    with pytest.raises(InputMismatchError, match="dtype"):
        backend.run(artifact, [torch.randn(2, 64, dtype=torch.float64)])


def test_dense_reference_is_lowered_beside_the_sparse_artifacts(zoo, tmp_path):
    result = _compile(zoo, "resnet", "2:4", tmp_path / "b", dense_reference=True)
    ref = result.manifest["dense_reference"]
    assert (tmp_path / "b" / ref["program"]).is_file()
    for target in TARGETS:
        d = ref["targets"][target]
        assert d["parity"]["ok"] and d["pattern_verification"]["layers"] == []
        for f in d["artifact"]["files"].values():
            assert (tmp_path / "b" / d["folder"] / f).is_file()
        assert result.dense_targets[target].artifact.root == tmp_path / "b" / "dense" / target

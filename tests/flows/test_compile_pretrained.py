"""Real pretrained models through `sparsecc.compile` (slow: they run in CI too)."""

import json

import pytest

from sparsecc.flows.compile import compile

pytestmark = pytest.mark.slow


def _ok(manifest, target):
    d = manifest["targets"][target]
    assert d["parity"]["ok"], d["parity"]
    assert d["pattern_verification"]["ok"]
    assert d["pattern_verification"]["layers"], "no sparse layer was verified in the artifact"


@pytest.mark.parametrize("name", ["minilm", "efficientnet-lite0"])
def test_real_model_2of4_to_onnx_and_executorch(zoo, tmp_path, name):
    spec, program = zoo(name)
    result = compile(spec, "recipes/2of4.yaml", tmp_path / "b", targets=["onnx", "executorch"], program=program,
                     dense_reference=False)
    for target in ("onnx", "executorch"):
        _ok(result.manifest, target)
    onnx_layers = result.manifest["targets"]["onnx"]["pattern_verification"]["layers"]
    # every 2:4 layer whose K is a multiple of 4 is TensorRT-eligible in the ONNX file
    assert all(x["eligible"] for x in onnx_layers), [x for x in onnx_layers if not x["eligible"]]


def test_smollm2_2of4_to_onnx(zoo, tmp_path):
    spec, program = zoo("smollm2")
    result = compile(spec, "recipes/2of4.yaml", tmp_path / "b", targets=["onnx"], program=program,
                     dense_reference=False)
    _ok(result.manifest, "onnx")
    assert result.manifest["sparsity"]["summary"]["sparse_layers"] == 7 * 30  # q k v o gate up down x 30


def test_minilm_90_percent_with_sparse_initializers_is_small(zoo, tmp_path):
    spec, program = zoo("minilm")
    dense = compile(spec, None, tmp_path / "dense", targets=["onnx"], program=program)
    # MiniLM's word-embedding table is half its weights: the recipe prunes it too.
    recipe = {"pattern": "unstructured", "sparsity": 0.9, "layers": {"include_embeddings": True}}
    sparse = compile(spec, recipe, tmp_path / "sparse", targets=["onnx"], program=program, dense_reference=False)
    _ok(sparse.manifest, "onnx")
    size = lambda r: sum(r.manifest["targets"]["onnx"]["artifact"]["sizes"].values())  # noqa: E731
    ratio = size(sparse) / size(dense)
    assert ratio <= 0.35, f"sparse/dense ONNX size {ratio:.3f}"
    meta = json.loads((tmp_path / "sparse" / "manifest.json").read_text())["targets"]["onnx"]["artifact"]["meta"]
    assert meta  # the ONNX backend records what it stored sparse

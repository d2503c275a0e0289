"""Data-loss and usability defects, each reproduced: an `input` argument (nn.Sequential) on ONNX, --force on a user's
folder, parity on the declared dynamic shapes, a bundle from file.py:factory that travels, the torch runner
with keyword inputs."""

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsecc.bundle.hashes import hash_files
from sparsecc.bundle.reader import Bundle
from sparsecc.bundle.staging import OutputExistsError
from sparsecc.flows.compile import compile
from sparsecc.flows.verify_bundle import require_verified, verify_bundle
from sparsecc.models.resolve import resolve_model

MODEL_FILE = textwrap.dedent("""
    import torch
    from torch import nn
    from torch.export import Dim

    def make():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))  # forward(self, input)
        dyn = ({0: Dim("batch", min=1, max=16), 1: Dim("seq", min=2, max=48)},)
        return net, (torch.randn(2, 5, 8),), {}, dyn
""")
TARGETS = ["onnx", "executorch"]


@pytest.fixture(scope="module")
def user_bundle(tmp_path_factory):
    """A 2:4 bundle of a user's model file, compiled from the file's own folder."""
    root = tmp_path_factory.mktemp("user")
    (root / "src").mkdir()
    (root / "src" / "my_model.py").write_text(MODEL_FILE)
    cwd = Path.cwd()
    try:
        import os

        os.chdir(root / "src")
        compile(resolve_model("my_model.py:make"), {"pattern": "2:4"}, root / "bundle", targets=TARGETS)
    finally:
        os.chdir(cwd)
    return root / "bundle"


def test_sequential_with_an_input_argument_compiles_and_runs_on_onnx(user_bundle):
    """torch.export names it input_1, ONNX names it input; the feed was empty."""
    m = json.loads((user_bundle / "manifest.json").read_text())
    assert m["targets"]["onnx"]["parity"]["ok"]
    assert [c["inputs"] for c in m["targets"]["onnx"]["parity"]["cases"]][0] == "example"


def test_feed_order_matches_by_name_then_position_and_never_drops():
    from types import SimpleNamespace as Arg

    from sparsecc.core.ort_session import FeedMismatchError, feed_order

    specs = [("input_1", "float32", 3), ("mask", "int64", 2)]
    renamed = [Arg(name="input", type="tensor(float)", shape=["b", "s", 8]), Arg(name="mask", type="tensor(int64)", shape=[2, 5])]
    assert feed_order(specs, renamed) == [0, 1]
    assert feed_order(specs, renamed[1:]) == [1]  # an input the graph does not read is dropped by the exporter
    with pytest.raises(FeedMismatchError, match="'ids'"):
        feed_order(specs, [Arg(name="ids", type="tensor(int32)", shape=[2])])


def test_parity_on_smallest_example_and_largest_allowed_shapes_on_every_target(user_bundle):
    """a file.py:factory model with dynamic batch and seq got parity on the example only."""
    m = json.loads((user_bundle / "manifest.json").read_text())
    shapes = {p["label"]: p["shapes"]["input_1" if "input_1" in p["shapes"] else next(iter(p["shapes"]))]
              for p in m["parity_inputs"]}
    assert list(shapes.values())[:4] == [[2, 5, 8], [1, 2, 8], [16, 5, 8], [2, 48, 8]]
    for target in TARGETS:
        cases = m["targets"][target]["parity"]["cases"]
        assert [c["inputs"] for c in cases] == list(shapes)
        assert all(c["ok"] and not c.get("skipped") for c in cases), (target, cases)
    assert all(p["stored"] for p in m["parity_inputs"])


def test_a_bundle_from_a_model_file_travels(user_bundle, tmp_path, monkeypatch):
    """the manifest pointed at my_model.py relative to the working directory."""
    moved = tmp_path / "elsewhere" / "bundle"
    shutil.copytree(user_bundle, moved)
    monkeypatch.chdir(tmp_path)
    b = Bundle(moved)
    assert b.manifest.model_source.file == "model/my_model.py"
    assert (moved / "model" / "my_model.py").read_text() == MODEL_FILE
    spec = resolve_model(b.model_ref)
    assert isinstance(spec.model, torch.nn.Sequential)
    require_verified(verify_bundle(moved))


def test_an_evaluation_of_nothing_is_an_error():
    from sparsecc.quality.evaluate import EvalError, EvalResult, require_evaluated

    unavailable = EvalResult("perplexity", "m", "onnx", "sparse", {}, {"unavailable": "no tokenizer"})
    with pytest.raises(EvalError, match="nothing was evaluated.*no tokenizer"):
        require_evaluated([unavailable], "b")
    with pytest.raises(EvalError, match="nothing was evaluated"):
        require_evaluated([], "b")


def test_force_never_deletes_a_users_folder(tmp_path):
    """`compile --force -o d` removed d/thesis.txt."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "thesis.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="not an earlier output of sparsecc"):
        compile(torch.nn.Linear(4, 4), None, d, example_args=(torch.randn(1, 4),), targets=["onnx"], force=True)
    assert [p.name for p in d.iterdir()] == ["thesis.txt"]


def test_torch_runner_passes_keyword_inputs_as_keywords(zoo, tmp_path):
    """`bench --backend torch` on MiniLM-style bundles (keyword inputs) failed."""
    from sparsecc.benchmarking.runners import load_variant
    from sparsecc.core.program import tensor_leaves

    spec, program = zoo("hf-bert-tiny")
    assert spec.example_kwargs and not spec.example_args
    out = tmp_path / "b"
    compile(spec, None, out, targets=[], program=program, dense_reference=False)
    b = Bundle(out)
    loaded = load_variant(b.variant("torch", "sparse"), threads=1)
    example = np.load(out / "inputs" / "example.npz")
    got = tensor_leaves(loaded.run([example[f"arr_{i}"] for i in range(len(b.inputs))]))
    want = tensor_leaves(program.module()(**spec.example_kwargs))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)

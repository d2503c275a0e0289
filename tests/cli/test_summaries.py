"""Summary figures that do not mislead: zero share of the pruned layers, the dense row beside the sparse one."""

from __future__ import annotations

import io

from rich.console import Console

from sparsecc.flows.report import LayerRow, SparsityReport, quality_table
from sparsecc.quality.evaluate import EvalResult


def _text(renderable) -> str:
    """The table as plain words, box drawing removed."""
    buf = io.StringIO()
    Console(file=buf, width=300, emoji=False).print(renderable)
    return " ".join(buf.getvalue().translate({ord(c): " " for c in "│┃┏┓┗┛┡┩└┘━─┳┻╇┴┬┼╋"}).split())


def test_zero_share_excludes_layers_left_dense_on_purpose():
    rows = [
        LayerRow("fc1", "fc1.weight", "linear", [100, 100], 10_000, 0, "2:4", 0.5, 0.5, "sparse"),
        LayerRow("fc2", "fc2.weight", "linear", [100, 100], 10_000, 0, "2:4", 0.5, 0.5, "sparse"),
        LayerRow("head", "head.weight", "linear", [10, 2000], 20_000, 0, None, None, None, "dense: excluded"),
    ]
    report = SparsityReport(rows)
    summary = report.to_dict()["summary"]
    assert summary["sparse_layer_sparsity"] == 0.5  # what the recipe asked for
    assert summary["overall_sparsity"] == 0.25  # diluted by the dense head: labelled as such
    caption = _text(report.table())
    assert "2/3 layers sparse: 10k of their 20k params are zero (50.0%)" in caption
    assert "1 layers (20k params) left dense on purpose, 25.0% of all prunable params" in caption


def test_eval_table_puts_a_dense_row_beside_the_sparse_one():
    sparse = EvalResult("digit-accuracy", "mnist", "torch", "sparse",
                        {"accuracy": 0.95, "dense_accuracy": 0.98, "top1_agreement": 0.96}, seconds=1.5)
    text = _text(quality_table([sparse]))
    assert "torch dense 0.9800" in text and "torch sparse 0.9500" in text and "0.9600" in text
    assert text.index("torch dense") < text.index("torch sparse")
    # a bundle already has its dense result: no synthetic row
    dense = EvalResult("digit-accuracy", "mnist", "onnx", "dense", {"accuracy": 0.98})
    onnx_sparse = EvalResult("digit-accuracy", "mnist", "onnx", "sparse", {"accuracy": 0.95, "dense_accuracy": 0.98})
    assert _text(quality_table([dense, onnx_sparse])).count("onnx dense") == 1

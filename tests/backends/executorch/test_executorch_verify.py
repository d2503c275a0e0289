"""Sparsity patterns re-checked on the weights as stored in the ``.pte``."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from torch import nn

pytest.importorskip("executorch")

from sparsecc.backends.base import Artifact, LowerOptions  # noqa: E402
from sparsecc.backends.executorch.pte import PteReader  # noqa: E402
from sparsecc.core.ir import MaskSpec, SparsityPattern  # noqa: E402

NM = SparsityPattern.n_m(2, 4)
UNSTRUCTURED = SparsityPattern.unstructured()


def _by_fqn(checks):
    return {c.fqn: c for c in checks}


def test_patterns_hold_in_the_stored_layouts(cases, backend):
    specs = [
        MaskSpec("c1.weight", SparsityPattern.n_m(1, 3), 2 / 3),
        MaskSpec("dw.weight", UNSTRUCTURED, 0.5),
        MaskSpec("pw.weight", UNSTRUCTURED, 0.9),
        MaskSpec("c3.weight", NM, 0.5),
        MaskSpec("fc.weight", NM, 0.5),
    ]
    checks = _by_fqn(backend.verify_pattern(cases["cnn"].artifact, specs))
    assert all(c.ok for c in checks.values()), [c for c in checks.values() if not c.ok]
    assert all(c.location.startswith("XNNPACK delegate") for c in checks.values())
    assert checks["c3.weight"].layout.startswith("[out, kh, kw, in/groups]")
    assert checks["dw.weight"].layout.startswith("[1, kh, kw, out]")
    assert checks["fc.weight"].layout.startswith("[out, in]")
    assert checks["c3.weight"].achieved == pytest.approx(0.5)
    assert checks["pw.weight"].achieved == pytest.approx(0.9, abs=1 / 256)
    # XNNPACK folded bn1 into c1: other values, same zeros; the check says so.
    assert "BatchNorm folded" in checks["c1.weight"].reason


def test_weight_index_records_layout_and_verbatim(cases):
    weights = cases["cnn"].artifact.meta["weights"]
    assert weights["c3.weight"]["dims"] == [32, 3, 3, 16]
    assert (weights["c3.weight"]["output_axis"], weights["c3.weight"]["reduction_axis"]) == (0, 3)
    assert weights["dw.weight"]["dims"] == [1, 3, 3, 16]
    assert weights["c1.weight"]["verbatim"] is False
    assert all(weights[f]["verbatim"] for f in ("dw.weight", "pw.weight", "c3.weight", "fc.weight"))


def test_broken_pattern_is_reported(cases, backend):
    specs = [
        MaskSpec("fc2.weight", NM, 0.5),  # 50% unstructured, not 2:4
        MaskSpec("fc3.weight", UNSTRUCTURED, 0.5),  # dense
    ]
    checks = _by_fqn(backend.verify_pattern(cases["mlp"].artifact, specs))
    assert not checks["fc2.weight"].ok and "break 2:4" in checks["fc2.weight"].reason
    assert not checks["fc3.weight"].ok and "zeros, expected at least" in checks["fc3.weight"].reason
    assert checks["fc3.weight"].achieved == 0.0


def test_nm_runs_along_the_stored_reduction_axis(backend, tools, tmp_path):
    """2:4 along the output axis is not 2:4 along the reduction axis XNNPACK reads."""
    model = nn.Sequential(nn.Linear(16, 32)).eval()
    tools.nm_(model[0].weight, axis=0)
    program = tools.capture(model, torch.randn(2, 16), None)
    art = backend.lower(program, tmp_path, LowerOptions(compress=False))
    (check,) = backend.verify_pattern(art, [MaskSpec("0.weight", NM, 0.5)])
    assert not check.ok and check.achieved == pytest.approx(0.5)


def test_portable_weight_is_read_from_the_constant_buffer(cases, backend):
    specs = [MaskSpec("head.weight", UNSTRUCTURED, 0.5), MaskSpec("body.weight", NM, 0.5)]
    checks = _by_fqn(backend.verify_pattern(cases["partial"].artifact, specs))
    assert checks["head.weight"].ok and checks["head.weight"].location.startswith("constant buffer")
    assert checks["body.weight"].ok and checks["body.weight"].location.startswith("XNNPACK delegate")


def test_unknown_weight_is_not_ok(cases, backend):
    (check,) = backend.verify_pattern(cases["mlp"].artifact, [MaskSpec("nope.weight", NM, 0.5)])
    assert not check.ok and check.location == "not found in the .pte" and math.isnan(check.achieved)


def test_check_reads_the_file_not_the_program(cases, backend, tmp_path):
    """Put a nonzero where a 2:4 group had its zeros, in a copy of the .pte: the check must see it."""
    art = cases["mlp"].artifact
    entry = art.meta["weights"]["fc1.weight"]
    stored, _ = PteReader.open(art.path()).xnnpack_tensor(entry["delegate"], entry["value"])
    data = bytearray(art.path().read_bytes())
    offset = data.find(stored.numpy().tobytes())
    assert offset > 0
    zero = int(torch.nonzero(stored.reshape(-1) == 0)[0])
    data[offset + 4 * zero : offset + 4 * zero + 4] = torch.tensor([1.0]).numpy().tobytes()
    root = tmp_path / "tampered"
    root.mkdir()
    (root / art.files["model"]).write_bytes(bytes(data))
    tampered = Artifact(art.backend, root, {"model": art.files["model"]}, art.inputs, art.outputs, art.meta)
    (check,) = backend.verify_pattern(tampered, [MaskSpec("fc1.weight", NM, 0.5)])
    assert not check.ok and "break 2:4" in check.reason
    shutil.rmtree(root)

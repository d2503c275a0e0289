"""The delegation report, the per-layer checks, and the partitioner's reasons."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("executorch")

from sparsecc.backends.base import Support  # noqa: E402
from sparsecc.backends.executorch.checks import DENSE_REASON, layer_checks  # noqa: E402
from sparsecc.backends.executorch.rejections import PARTITION_LOGGER, capture_rejections  # noqa: E402


def _layers(case):
    return {e["fqn"]: e for e in case.artifact.meta["delegation"]["layers"]}


@pytest.mark.parametrize("name", ["mlp", "cnn", "attention", "partial"])
def test_report_counts_add_up(cases, name):
    report = cases[name].artifact.meta["delegation"]
    nodes, summary = report["nodes"], report["summary"]
    assert summary["xnnpack_nodes"] == sum(n["where"] == "xnnpack" for n in nodes)
    assert summary["portable_nodes"] == sum(n["where"] == "portable" for n in nodes)
    assert summary["xnnpack_nodes"] == sum(c["xnnpack"] for c in report["by_op"].values())
    assert summary["portable_nodes"] == sum(c["portable"] for c in report["by_op"].values())
    assert summary["delegates"] >= 1
    for n in nodes:
        assert (n["delegate"] is None) == (n["where"] == "portable")
        assert (n["reason"] is None) == (n["where"] == "xnnpack"), n


def test_every_cnn_layer_runs_in_xnnpack(cases):
    layers = _layers(cases["cnn"])
    assert set(layers) == {"c1.weight", "dw.weight", "pw.weight", "c3.weight", "fc.weight"}
    assert {e["where"] for e in layers.values()} == {"xnnpack"}
    assert layers["dw.weight"]["role"] == "conv" and layers["dw.weight"]["layer"] == "dw"
    by_op = cases["cnn"].artifact.meta["delegation"]["by_op"]
    assert by_op["aten.convolution.default"] == {"xnnpack": 4, "portable": 0}


def test_partial_delegation_is_reported_with_reasons(cases):
    art = cases["partial"].artifact
    report = art.meta["delegation"]
    layers = _layers(cases["partial"])
    assert layers["body.weight"]["where"] == "xnnpack"
    head = layers["head.weight"]
    assert head["where"] == "portable" and head["delegate"] is None
    assert "invalid dtype" in head["reason"] and "float64" in head["reason"]
    cumsum = [n for n in report["nodes"] if n["op"] == "aten.cumsum.default"]
    assert len(cumsum) == 1 and cumsum[0]["where"] == "portable"
    assert cumsum[0]["reason"] == "XNNPACK has no rule for aten.cumsum.default"
    assert report["by_op"]["aten.cumsum.default"] == {"xnnpack": 0, "portable": 1}
    assert "aten::cumsum.out" in report["kernels"]["operators"]
    assert report["kernels"]["missing"] == []


def test_check_says_dense_or_portable_per_layer(cases, backend):
    checks = {c.fqn: c for c in backend.check(cases["partial"].program)}
    assert set(checks) == {"body.weight", "head.weight"}
    assert checks["body.weight"].support is Support.DENSE
    assert checks["body.weight"].reason == DENSE_REASON
    assert checks["head.weight"].support is Support.UNSUPPORTED
    assert "portable kernels" in checks["head.weight"].reason and "float64" in checks["head.weight"].reason
    # check() and lower() agree on the layers, and check_artifact reads them without lowering again.
    want = [checks[f].to_dict() for f in ("body.weight", "head.weight")]
    assert [c.to_dict() for c in layer_checks(cases["partial"].artifact.meta["delegation"])] == want
    from_artifact = backend.check_artifact(cases["partial"].program, cases["partial"].artifact)
    assert [c.to_dict() for c in from_artifact] == want


def test_rejection_capture_restores_logging():
    utils = pytest.importorskip("executorch.exir.backend.utils")
    logger = logging.getLogger(PARTITION_LOGGER + ".config.gemm_configs")
    before = (logger.level, list(logger.filters))

    class _Node:
        name = "n0"

    with capture_rejections() as reasons:
        utils.WhyNoPartition(logger=logger)(_Node(), "a reason")
    assert reasons == {"n0": "a reason"}
    assert (logger.level, list(logger.filters)) == before

"""Cross-check: our N:M verifier and polygraphy's 2:4 checker agree on exported models."""

from __future__ import annotations

import pytest

onnx = pytest.importorskip("onnx")
sparse = pytest.importorskip("polygraphy.tools.sparse")

from sparsecc.backends.onnx import check_nm  # noqa: E402

# polygraphy compares float32 weights against sys.float_info.max.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")

EXPECTED_ELIGIBLE = {
    "mlp": {"fc1.weight"},
    "cnn": {"c2.weight", "fc.weight"},
    "attention": {"q.weight", "k.weight"},
}


def polygraphy_sparse(model: onnx.ModelProto) -> set[str]:
    """Initializers that polygraphy's checker (`polygraphy inspect sparsity`) calls 2:4 sparse."""
    pruner = sparse.SparsityPruner(model)
    pruner.check()
    return set(pruner.sparse_tensors)


@pytest.mark.parametrize("name", list(EXPECTED_ELIGIBLE))
def test_same_eligible_layers_as_polygraphy(cases, name):
    art = cases[name].artifact
    model = onnx.load(str(art.path()))
    ours = {e.initializer for e in check_nm(model, 2, 4) if e.eligible}
    assert ours == polygraphy_sparse(model)
    # And they are the weights we made 2:4 along the reduction axis (plus
    # any weight whose zeros happen to fall into a 2:4 pattern).
    by_init = {p["initializer"]: fqn for fqn, p in art.meta["provenance"].items()}
    assert EXPECTED_ELIGIBLE[name] <= {by_init[i] for i in ours}
    assert "v.weight" not in {by_init[i] for i in ours}  # 2:4 on the wrong axis

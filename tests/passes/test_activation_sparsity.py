"""Activation sparsity: measured statistics, calibrated thresholds, the pass, and the kernel rewrite."""

from __future__ import annotations

import pytest
import torch

from sparsecc.backends import LowerOptions, get_backend
from sparsecc.backends.torch_sparse.rewrite_activation_sparse import RewriteActivationSparsePass, act_weight_target
from sparsecc.core.pass_infra import PreconditionError
from sparsecc.errors import UsageError
from sparsecc.passes import ActivationSparsityPass
from sparsecc.passes.activation_sparsity import thresholded_input
from sparsecc.plan.activation_sparsity import measure_activations, select_layers, thresholds_for
from sparsecc.testing import export_module


class GeluMLP(torch.nn.Module):
    def __init__(self, act: torch.nn.Module) -> None:
        super().__init__()
        self.up = torch.nn.Linear(32, 128)
        self.act = act
        self.down = torch.nn.Linear(128, 32)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + self.down(self.act(self.up(x))))


def _program(act: torch.nn.Module, seed: int = 0):
    torch.manual_seed(seed)
    return export_module(GeluMLP(act).eval(), (torch.randn(4, 32),))


def _batches(n: int = 6, seed: int = 1, rows: int = 4):
    g = torch.Generator().manual_seed(seed)
    return [((torch.randn(rows, 32, generator=g),), {}) for _ in range(n)]


def test_statistics_name_each_linear_and_count_exact_zeros():
    relu = measure_activations(_program(torch.nn.ReLU()), _batches())
    by = {s.fqn: s for s in relu}
    assert list(by) == ["up.weight", "down.weight", "head.weight"]
    assert by["down.weight"].producer == "relu" and by["down.weight"].in_features == 128
    assert 0.3 < by["down.weight"].zero < 0.7  # ReLU of a random layer: about half
    assert by["up.weight"].zero == 0.0 and by["up.weight"].values == 6 * 4 * 32
    assert by["down.weight"].threshold(0.2) == 0.0  # exact zeros already reach 20%
    gelu = {s.fqn: s for s in measure_activations(_program(torch.nn.GELU()), _batches())}
    assert gelu["down.weight"].zero == 0.0 and gelu["down.weight"].threshold(0.5) > 0


@pytest.mark.parametrize("target", [0.4, 0.5, 0.7])
def test_thresholds_hit_their_target_on_the_calibration_data(target):
    program = _program(torch.nn.GELU())
    batches = _batches(8)
    stats = select_layers(measure_activations(program, batches, sample=1 << 20))
    assert [s.fqn for s in stats] == ["up.weight", "down.weight"]  # the head is left out by default
    thresholds = thresholds_for(stats, target)
    sparse = ActivationSparsityPass(thresholds)(program).program
    achieved = {s.fqn: s.zero for s in measure_activations(sparse, batches)}
    for fqn in thresholds:
        assert abs(achieved[fqn] - target) < 0.02, (fqn, achieved[fqn])
    assert achieved["head.weight"] == 0.0


def test_the_pass_computes_the_thresholded_layer_and_is_idempotent():
    program = _program(torch.nn.GELU())
    pass_ = ActivationSparsityPass({"down.weight": 0.05})
    sparse = pass_(program).program
    x = torch.randn(4, 32)
    m = GeluMLP(torch.nn.GELU())
    m.load_state_dict({k: v for k, v in program.state_dict.items()})
    h = torch.nn.functional.gelu(m.up(x))
    want = m.head(x + m.down(torch.where(h.abs() > 0.05, h, 0.0)))
    torch.testing.assert_close(sparse.module()(x), want, rtol=0, atol=1e-6)
    linears = [n for n in sparse.graph.nodes if n.target == torch.ops.aten.linear.default]
    assert [thresholded_input(n) is not None for n in linears] == [False, True, False]
    again = ActivationSparsityPass({"down.weight": 0.05})(sparse)
    assert not again.modified


def test_bad_thresholds_and_layers_are_named():
    program = _program(torch.nn.GELU())
    with pytest.raises(PreconditionError, match="not the weight of a linear layer of this program: mid.weight"):
        ActivationSparsityPass({"mid.weight": 0.1})(program)
    with pytest.raises(ValueError, match="down.weight: an activation threshold must be a number >= 0"):
        ActivationSparsityPass({"down.weight": -1.0})
    stats = measure_activations(program, _batches(2))
    with pytest.raises(UsageError, match="not measured: nope.weight"):
        thresholds_for(stats, {"nope.weight": 0.5})
    with pytest.raises(UsageError, match="must lie in"):
        thresholds_for(stats, 1.0)
    with pytest.raises(UsageError, match="no linear layer matches"):
        select_layers(stats, ["*attn*"])


def test_torch_sparse_runs_thresholded_layers_on_the_activation_kernel(tmp_path):
    program = _program(torch.nn.GELU())
    stats = select_layers(measure_activations(program, _batches()))
    sparse = ActivationSparsityPass(thresholds_for(stats, 0.5))(program).program
    art = get_backend("torch-sparse").lower(sparse, tmp_path, LowerOptions(threads=1))
    kernels_used = art.meta["activation_kernels"]
    assert {f for f, t in kernels_used.items() if t >= 0} == {"up.weight", "down.weight"}
    # the head has no threshold: timed as a dense gemv (threshold -1), moved only if that was faster
    assert set(art.meta["gemv_timings_ms"]) == {"head.weight"}
    timing = art.meta["gemv_timings_ms"]["head.weight"]
    assert (kernels_used.get("head.weight") == -1.0) == (timing["torch_ms"] > 1.1 * timing["gemv_ms"])
    runner = get_backend("torch-sparse").load(art, threads=1)
    x = torch.randn(4, 32)
    torch.testing.assert_close(runner([x])[0], sparse.module()(x), rtol=1e-5, atol=1e-5)


def test_exact_relu_skipping_is_bitwise_the_kernels_dense_result():
    program = _program(torch.nn.ReLU())
    pass_ = RewriteActivationSparsePass(exact_relu=True)
    rewritten = pass_(program).program
    assert pass_.rewritten == {"down.weight": 0.0}
    assert act_weight_target("down.weight") in rewritten.constants
    assert "down.weight" not in rewritten.state_dict
    x = torch.randn(4, 32)
    m = rewritten.module()
    sd = program.state_dict
    h = torch.relu(torch.nn.functional.linear(x, sd["up.weight"], sd["up.bias"]))
    import sparsecc.kernels as kernels
    down_dense = kernels.act_sparse_linear(h, sd["down.weight"], sd["down.bias"], -1.0)  # every input, same order
    want = torch.nn.functional.linear(x + down_dense, sd["head.weight"], sd["head.bias"])
    assert torch.equal(m(x), want)
    assert not RewriteActivationSparsePass(exact_relu=False)(program).modified

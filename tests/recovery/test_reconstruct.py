"""Block-wise reconstruction: exact on a reachable target, lower error than one-shot, zeros kept."""

from __future__ import annotations

import pytest
import torch

from sparsecc.flows.sparsify import sparsify
from sparsecc.recovery import RecoveryOptions, get_method, masks_of
from sparsecc.recovery.base import RecoveryError, assert_zeros_kept
from sparsecc.recovery.reconstruct import masked_least_squares
from sparsecc.testing import export_module

from ._models import PATTERNS, conv_batches, conv_program, mlp_batches, mlp_program, output_error


def _reference_rows(hs, g, mask, lam):
    out = torch.zeros_like(g)
    for r in range(mask.shape[0]):
        cols = mask[r].nonzero().squeeze(1)
        a = hs[cols][:, cols] + lam * torch.eye(len(cols), dtype=hs.dtype)
        out[r, cols] = torch.linalg.solve(a, g[r, cols])
    return out


@pytest.mark.parametrize("kind", ["shared", "nm", "unstructured"])
def test_masked_least_squares_matches_a_row_by_row_solve(kind):
    torch.manual_seed(0)
    x = torch.randn(200, 16, dtype=torch.float64)
    hs, g = x.T @ x, torch.randn(12, 16, dtype=torch.float64)
    if kind == "shared":  # every row the same pattern (channel / block rows)
        mask = (torch.rand(16) > 0.5).expand(12, 16).clone()
    elif kind == "nm":
        mask = torch.zeros(12, 16, dtype=torch.bool)
        idx = torch.rand(12, 4, 4).argsort(-1)[..., :2]
        mask.view(12, 4, 4).scatter_(2, idx, True)
    else:
        mask = torch.rand(12, 16) > 0.4
    got = masked_least_squares(hs, g, mask, damp=0.01)
    lam = 0.01 * float(hs.diagonal().mean())
    torch.testing.assert_close(got, _reference_rows(hs, g, mask, lam), rtol=1e-9, atol=1e-9)
    assert bool((got[~mask] == 0).all())


class _Paired(torch.nn.Module):
    """A linear layer fed pairs of identical features: inputs 0=1 and 2=3 in each group of 4."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 8, bias=False)
        signs = torch.randint(0, 2, (8, 16)).float() * 2 - 1
        mags = torch.tensor([2.0, 0.1, 1.5, 0.2]).repeat(4)  # magnitude keeps one input of each pair
        with torch.no_grad():
            self.fc.weight.copy_(signs * mags)

    def forward(self, u):
        return self.fc(u.repeat_interleave(2, dim=-1))


def test_reconstruction_recovers_a_reachable_dense_target_exactly():
    torch.manual_seed(0)
    dense = export_module(_Paired(), (torch.randn(16, 8),))
    batches = [((torch.randn(16, 8),), {}) for _ in range(4)]
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    assert output_error(sparse, dense, batches) > 1e-3  # one-shot drops the small twin of each pair
    result = get_method("reconstruct")(sparse, dense, batches,
                                       RecoveryOptions("reconstruct", extra={"damp": 1e-9}), None)
    held_out = [((torch.randn(16, 8),), {}) for _ in range(2)]
    assert output_error(result.program, dense, held_out) < 1e-10  # the kept twin takes the pair's sum
    assert_zeros_kept(result.program, masks_of(sparse))
    assert result.loss_after < result.loss_before


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_reconstruction_lowers_the_output_error_of_every_pattern(pattern):
    """``undo: 1``: each layer matches the dense layer's output, undoing the error of the layers before it (with
    whole rows pruned, ``undo: 0``'s target is already met by the one-shot weights)."""
    dense = mlp_program()
    sparse = sparsify(dense, PATTERNS[pattern], fold=True).program
    result = get_method("reconstruct")(sparse, dense, mlp_batches(16),
                                       RecoveryOptions("reconstruct", extra={"undo": 1.0}), None)
    held_out = mlp_batches(4, seed=99)
    before, after = output_error(sparse, dense, held_out), output_error(result.program, dense, held_out)
    assert after < 0.8 * before, (before, after)
    assert_zeros_kept(result.program, masks_of(sparse))
    assert result.details["layer_error_after"] < result.details["layer_error_before"]


def test_reconstruction_of_convolutions():
    dense = conv_program()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    result = get_method("reconstruct")(sparse, dense, conv_batches(8), RecoveryOptions("reconstruct"), None)
    held_out = conv_batches(2, seed=99)
    assert output_error(result.program, dense, held_out) < 0.8 * output_error(sparse, dense, held_out)
    assert result.details["layers"] == 3 and result.details["skipped"] == 0


def test_masked_and_folded_programs_reconstruct_alike():
    dense = mlp_program()
    batches = mlp_batches(8)
    got = {}
    for fold in (True, False):
        sparse = sparsify(dense, {"pattern": "2:4"}, fold=fold).program
        got[fold] = get_method("reconstruct")(sparse, dense, batches, RecoveryOptions("reconstruct"), None)
    assert got[True].loss_after == pytest.approx(got[False].loss_after, rel=1e-6)
    for fqn in ("a.weight", "b.weight", "c.weight"):
        torch.testing.assert_close(got[True].program.state_dict[fqn], got[False].program.state_dict[fqn])


def test_reconstruction_resumes_from_its_checkpoint(tmp_path):
    dense = mlp_program()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    opts = RecoveryOptions("reconstruct", checkpoint_dir=str(tmp_path))
    first = get_method("reconstruct")(sparse, dense, mlp_batches(8), opts, None)
    assert (tmp_path / "reconstruct.pt").exists()
    again = get_method("reconstruct")(sparse, dense, mlp_batches(8), opts, None)
    for fqn, t in first.program.state_dict.items():
        assert torch.equal(t, again.program.state_dict[fqn])


def test_conjugate_gradients_reach_the_exact_solution_of_large_layers():
    torch.manual_seed(1)
    x = torch.randn(400, 32, dtype=torch.float64)
    hs, g = x.T @ x, torch.randn(20, 32, dtype=torch.float64)
    mask = torch.zeros(20, 32, dtype=torch.bool)
    mask.view(20, 8, 4).scatter_(2, torch.rand(20, 8, 4).argsort(-1)[..., :2], True)
    exact = masked_least_squares(hs, g, mask, damp=0.01)
    cg = masked_least_squares(hs, g, mask, damp=0.01, warm=torch.zeros(20, 32), iters=200, method="cg")
    torch.testing.assert_close(cg, exact, rtol=1e-4, atol=1e-5)
    few = masked_least_squares(hs, g, mask, damp=0.01, warm=torch.zeros(20, 32), iters=3, method="cg")
    assert not torch.allclose(few, exact, rtol=1e-4, atol=1e-5)  # the test above did run the iterations
    assert bool((cg[~mask] == 0).all())


def test_undo_zero_solves_sparsegpts_objective_exactly():
    """``undo: 0``: each layer fits the dense weights on its own sparse inputs (min ||W Xs - Wd Xs||², ridge
    damped towards the one-shot weights, kept weights only); ``undo: 1`` fits the dense layer's output on
    dense inputs instead."""
    dense = mlp_program()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    batches = mlp_batches(8)
    run = {u: get_method("reconstruct")(sparse, dense, batches, RecoveryOptions("reconstruct", extra={"undo": u}),
                                        None).program for u in (0.0, 1.0)}
    sd = run[0.0].state_dict
    x = torch.cat([a[0] for a, _ in batches]).double()
    xs = torch.relu(x @ sd["a.weight"].double().t() + sd["a.bias"].double())  # b's inputs, from the solved a
    hs = xs.T @ xs
    wd = dense.state_dict["b.weight"].double()
    mask = masks_of(sparse)["b.weight"]
    lam = 0.01 * float(hs.diagonal().mean())
    center = sparse.state_dict["b.weight"].double()  # the ridge pulls towards the one-shot weights (default)
    want = _reference_rows(hs, wd @ hs + lam * center * mask, mask, lam)
    torch.testing.assert_close(sd["b.weight"].double(), want, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(sd["a.weight"], run[1.0].state_dict["a.weight"])  # the first layer: Xs = Xd
    assert not torch.allclose(sd["b.weight"], run[1.0].state_dict["b.weight"])
    with pytest.raises(RecoveryError, match="undo must be between 0 and 1, got 2.0"):
        get_method("reconstruct")(sparse, dense, batches, RecoveryOptions("reconstruct", extra={"undo": 2}), None)


@pytest.mark.parametrize("kind", ["shared", "nm", "unstructured"])
def test_the_ridge_pulls_towards_its_center(kind):
    """λ|w - c|²: the solution of (Hs + λI) w = g + λc on the kept columns; with no data (Hs = 0, g = 0)
    it is the center itself, with the zero center it is zero."""
    torch.manual_seed(2)
    x = torch.randn(100, 16, dtype=torch.float64)
    hs, g = x.T @ x, torch.randn(12, 16, dtype=torch.float64)
    mask = {"shared": (torch.rand(16) > 0.5).expand(12, 16).clone(), "unstructured": torch.rand(12, 16) > 0.4,
            "nm": torch.zeros(12, 16, dtype=torch.bool).view(12, 4, 4).scatter_(
                2, torch.rand(12, 4, 4).argsort(-1)[..., :2], True).view(12, 16)}[kind]
    center = torch.randn(12, 16, dtype=torch.float64)
    lam = 0.5 * float(hs.diagonal().mean())
    got = masked_least_squares(hs, g, mask, damp=0.5, center=center)
    torch.testing.assert_close(got, _reference_rows(hs, g + lam * center * mask, mask, lam), rtol=1e-9, atol=1e-9)
    assert bool((got[~mask] == 0).all())
    none = masked_least_squares(torch.zeros_like(hs), torch.zeros_like(g), mask, damp=1.0, center=center)
    torch.testing.assert_close(none, center * mask, rtol=1e-9, atol=1e-12)
    cg = masked_least_squares(hs, g, mask, damp=0.5, center=center, warm=torch.zeros(12, 16), iters=200,
                              method="cg")
    torch.testing.assert_close(cg, got, rtol=1e-4, atol=1e-5)


def test_ridge_to_one_shot_keeps_weights_the_calibration_data_never_excites():
    """An input that is always zero in calibration says nothing about its weights: ``ridge_to: one-shot``
    leaves them at their one-shot values, ``zero`` (the plain ridge) shrinks them to zero."""
    dense = mlp_program()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    batches = [((a[0].index_fill(1, torch.tensor([5]), 0.0),), k) for a, k in mlp_batches(8)]
    w0 = sparse.state_dict["a.weight"]
    kept = masks_of(sparse)["a.weight"][:, 5]
    assert bool(kept.any()) and bool((w0[kept, 5] != 0).all())
    run = {r: get_method("reconstruct")(sparse, dense, batches,
                                        RecoveryOptions("reconstruct", extra={"ridge_to": r}), None).program
           for r in ("one-shot", "zero")}
    torch.testing.assert_close(run["one-shot"].state_dict["a.weight"][:, 5], w0[:, 5])
    assert bool((run["zero"].state_dict["a.weight"][:, 5] == 0).all())
    with pytest.raises(RecoveryError, match="ridge_to must be one-shot or zero, got 'dense'"):
        get_method("reconstruct")(sparse, dense, batches, RecoveryOptions("reconstruct", extra={"ridge_to": "dense"}),
                                  None)

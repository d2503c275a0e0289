"""Block-wise reconstruction by gradient steps: lower error than one-shot, zeros kept, resumable, bad options named."""

from __future__ import annotations

import pytest
import torch

from sparsecc.flows.sparsify import sparsify
from sparsecc.plan.graph_runner import GraphRunner
from sparsecc.recovery import RecoveryOptions, get_method, masks_of
from sparsecc.recovery.base import RecoveryError, assert_zeros_kept
from sparsecc.recovery.block_tune import _relative_error, block_segments
from sparsecc.testing import export_module

from ._models import PATTERNS, output_error


class _Block(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(d)
        self.up = torch.nn.Linear(d, 2 * d)
        self.down = torch.nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


class _Stack(torch.nn.Module):
    """Three residual blocks between an input projection and a head: numbered blocks as in a transformer."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(16, d)
        self.layers = torch.nn.ModuleList(_Block(d) for _ in range(3))
        self.head = torch.nn.Linear(d, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


def _dense():
    torch.manual_seed(0)
    return export_module(_Stack(), (torch.randn(8, 16),))


def _batches(n: int, seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    return [((torch.randn(8, 16, generator=g),), {}) for _ in range(n)]


def _opts(**kw) -> RecoveryOptions:
    base = {"steps": 60, "lr": 3e-3}
    base.update(kw)
    return RecoveryOptions("block-tune", **base)


def test_blocks_are_the_numbered_modules_in_graph_order():
    keys = [k for k, _, _ in block_segments(GraphRunner(_dense()))]
    assert keys == ["inp", "layers.0", "layers.1", "layers.2", "head"]


def test_per_token_error_is_not_drowned_by_one_massive_token():
    ref = torch.ones(1, 4, 8)
    ref[0, 0] *= 100.0  # a token with massive activations, as in a language model's residual stream
    out = ref.clone()
    out[0, 1:] += 0.5  # every ordinary token off by half its size
    assert float(_relative_error(out, ref, per_token=False)) < 0.001  # the total error barely sees it
    assert float(_relative_error(out, ref, per_token=True)) == pytest.approx(0.75 * 0.25)
    flat = torch.randn(6, 5)
    assert torch.equal(_relative_error(flat + 1, flat, True), _relative_error(flat + 1, flat, False))


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_block_tune_lowers_the_output_error_of_every_pattern(pattern):
    dense = _dense()
    sparse = sparsify(dense, PATTERNS[pattern], fold=True).program
    result = get_method("block-tune")(sparse, dense, _batches(8), _opts(), None)
    held_out = _batches(4, seed=99)
    before, after = output_error(sparse, dense, held_out), output_error(result.program, dense, held_out)
    assert after < 0.7 * before, (before, after)
    assert_zeros_kept(result.program, masks_of(sparse))
    assert result.details["block_error_after"] < result.details["block_error_before"]
    assert result.details["blocks"] == 5 and result.steps == 5 * 60
    assert result.loss_after < result.loss_before


def test_masked_and_folded_programs_tune_alike():
    dense = _dense()
    got = {}
    for fold in (True, False):
        sparse = sparsify(dense, {"pattern": "2:4"}, fold=fold).program
        got[fold] = get_method("block-tune")(sparse, dense, _batches(4), _opts(steps=20), None)
    assert got[True].loss_after == pytest.approx(got[False].loss_after, rel=1e-5)
    for fqn in ("layers.0.up.weight", "layers.1.down.weight", "layers.2.norm.weight"):
        torch.testing.assert_close(got[True].program.state_dict[fqn], got[False].program.state_dict[fqn],
                                   rtol=1e-5, atol=1e-6)


def test_train_masked_leaves_the_dense_parameters_alone():
    dense = _dense()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    result = get_method("block-tune")(sparse, dense, _batches(4), _opts(steps=20, extra={"train": "masked"}), None)
    state = result.program.state_dict
    assert torch.equal(state["layers.1.norm.weight"], sparse.state_dict["layers.1.norm.weight"])
    assert not torch.equal(state["layers.1.up.weight"], sparse.state_dict["layers.1.up.weight"])
    tuned_all = get_method("block-tune")(sparse, dense, _batches(4), _opts(steps=20), None)
    assert not torch.equal(tuned_all.program.state_dict["layers.1.norm.weight"],
                           sparse.state_dict["layers.1.norm.weight"])


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    dense = _dense()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    whole = get_method("block-tune")(sparse, dense, _batches(4), _opts(steps=20), None)

    def stop_after_two(line: str) -> None:
        if "(2/5 blocks)" in line:
            raise KeyboardInterrupt

    opts = _opts(steps=20, checkpoint_dir=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        get_method("block-tune")(sparse, dense, _batches(4), opts, stop_after_two)
    assert (tmp_path / "block-tune.pt").exists()
    seen = []
    resumed = get_method("block-tune")(sparse, dense, _batches(4), opts, seen.append)
    assert len(seen) == 5
    for fqn, t in whole.program.state_dict.items():
        assert torch.equal(t, resumed.program.state_dict[fqn]), fqn


def test_a_checkpoint_from_other_options_is_refused(tmp_path):
    dense = _dense()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    get_method("block-tune")(sparse, dense, _batches(2), _opts(steps=2, checkpoint_dir=str(tmp_path)), None)
    with pytest.raises(RecoveryError, match="other recovery options"):
        get_method("block-tune")(sparse, dense, _batches(2), _opts(steps=3, checkpoint_dir=str(tmp_path)), None)


@pytest.mark.parametrize("extra, message", [({"undo": 1.5}, "undo must be between 0 and 1, got 1.5"),
                                            ({"train": "norms"}, "train must be all or masked, got 'norms'"),
                                            ({"measure_batches": 0}, "measure_batches must be >= 1"),
                                            ({"normalize": "row"}, "normalize must be token or total, got 'row'")])
def test_bad_options_are_named(extra, message):
    dense = _dense()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=True).program
    with pytest.raises(RecoveryError, match=message):
        get_method("block-tune")(sparse, dense, _batches(2), _opts(extra=extra), None)


def test_a_dense_program_is_refused():
    dense = _dense()
    with pytest.raises(RecoveryError, match="no sparse weight"):
        get_method("block-tune")(dense, dense, _batches(2), _opts(), None)


def test_the_dense_twin_runs_on_the_teachers_parameters_also_where_an_earlier_stage_trained_them():
    from sparsecc.recovery.base import program_with_weights
    from sparsecc.recovery.lockstep import dense_overrides

    dense = _dense()
    sparse = sparsify(dense, {"pattern": "2:4"}, fold=False).program
    trained = program_with_weights(sparse, {"layers.0.norm.weight": sparse.state_dict["layers.0.norm.weight"] * 2})
    got = dense_overrides(trained, masks_of(trained), dense.state_dict)
    for fqn in ("layers.0.norm.weight", "layers.0.up.weight", "head.bias"):
        assert torch.equal(got[fqn], dense.state_dict[fqn]), fqn
    masks = {k: v for k, v in got.items() if k not in dense.state_dict}
    assert len(masks) == len(masks_of(trained)) and all(bool(v.all()) for v in masks.values())  # all ones

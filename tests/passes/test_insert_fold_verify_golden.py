"""Golden graphs for the mask passes: Before -> pass -> Expected, compared by structure."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sparsecc import MaskSpec, SparsityPattern, find_prunable_weights
from sparsecc.core.pass_infra import PassError, PreconditionError
from sparsecc.passes import (
    ComputeMasksPass,
    FoldMasksPass,
    InsertMasksPass,
)
from sparsecc.verify.verify_sparsity import SparsityVerificationError, VerifySparsityPass
from sparsecc.core.program import ProgramEditor
from sparsecc.testing import assert_same_structure, check_golden, export_module

NM24 = SparsityPattern.n_m(2, 4)


class TwoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class TwoLinearMasked(nn.Module):
    """What InsertMasksPass must produce: each weight multiplied by its mask first."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 8)
        self.m1 = torch.ones(32, 16, dtype=torch.bool)  # a plain tensor: lifted as a constant, as the pass lifts masks
        self.m2 = torch.ones(8, 32, dtype=torch.bool)  # a plain tensor: lifted as a constant, as the pass lifts masks

    def forward(self, x):
        h = F.linear(x, self.fc1.weight * self.m1, self.fc1.bias)
        return F.linear(torch.relu(h), self.fc2.weight * self.m2, self.fc2.bias)


class OneMasked(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 8)
        self.m2 = torch.ones(8, 32, dtype=torch.bool)  # a plain tensor: lifted as a constant, as the pass lifts masks

    def forward(self, x):
        return F.linear(torch.relu(self.fc1(x)), self.fc2.weight * self.m2, self.fc2.bias)


class SharedWeight(nn.Module):
    """One weight, two consumers: both must see the masked weight."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return self.fc(torch.relu(self.fc(x)))


class SharedWeightMasked(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.m = torch.ones(16, 16, dtype=torch.bool)  # a plain tensor: lifted as a constant, as the pass lifts masks

    def forward(self, x):
        w = self.fc.weight * self.m
        return F.linear(torch.relu(F.linear(x, w, self.fc.bias)), w, self.fc.bias)


X = (torch.randn(4, 16),)


def plan_all(program, pattern=NM24, target=0.5):
    return [MaskSpec(w.fqn, pattern, target, layer=w.layer) for w in find_prunable_weights(program).weights]


def with_masks(program, plan=None):
    plan = plan if plan is not None else plan_all(program)
    program = ComputeMasksPass(plan)(program).program
    return InsertMasksPass()(program).program


# -- InsertMasksPass ---------------------------------------------------------------


def test_insert_masks_golden():
    out = check_golden(
        TwoLinear(), InsertMasksPass(), TwoLinearMasked(), X,
        prepare=lambda p: ComputeMasksPass(plan_all(p))(p).program,
    )
    # masks are lifted boolean constants named after their weight
    assert set(out.constants) == {"fc1.weight_mask", "fc2.weight_mask"}
    assert all(t.dtype == torch.bool for t in out.constants.values())


def test_insert_masks_only_planned_weights():
    check_golden(
        TwoLinear(), InsertMasksPass(), OneMasked(), X,
        prepare=lambda p: ComputeMasksPass([MaskSpec("fc2.weight", NM24, 0.5)])(p).program,
    )


def test_insert_masks_shared_weight_masks_every_use_once():
    check_golden(
        SharedWeight(), InsertMasksPass(), SharedWeightMasked(), X,
        prepare=lambda p: ComputeMasksPass(plan_all(p))(p).program,
    )


def test_insert_masks_no_pending_masks_does_not_fire():
    check_golden(TwoLinear(), InsertMasksPass(), TwoLinear(), X)


def test_insert_masks_twice_tightens_existing_mask():
    program = with_masks(export_module(TwoLinear(), X), plan_all(export_module(TwoLinear(), X), SparsityPattern.unstructured(), 0.25))
    again = with_masks(program, [MaskSpec("fc1.weight", SparsityPattern.unstructured(), 0.5)])
    assert_same_structure(again, program, "InsertMasksPass again")  # no second mul, same mask shapes
    m = again.constants["fc1.weight_mask"]
    assert int((~m).sum()) == 256  # 50% of 32x16
    assert torch.equal(m & program.constants["fc1.weight_mask"], m)  # only prunes more


def test_masked_program_backpropagates_through_mask():
    program = with_masks(export_module(TwoLinear(), X))
    module = program.module()
    module(*X).square().sum().backward()
    grad = module.fc1.weight.grad
    mask = program.constants["fc1.weight_mask"]
    assert grad is not None and grad.abs().sum() > 0
    assert torch.all(grad[~mask] == 0)  # pruned entries get no gradient


# -- FoldMasksPass -----------------------------------------------------------------


def test_fold_masks_golden_and_parity():
    masked = with_masks(export_module(TwoLinear(), X))
    folded = FoldMasksPass()(masked)
    assert folded.modified
    assert_same_structure(folded.program, export_module(TwoLinear(), X), "FoldMasksPass")
    assert folded.program.constants == {}
    w = folded.program.state_dict["fc1.weight"]
    assert torch.equal(w, masked.state_dict["fc1.weight"] * masked.constants["fc1.weight_mask"])
    torch.testing.assert_close(folded.program.module()(*X), masked.module()(*X), rtol=1e-5, atol=0)


def test_fold_masks_no_masks_does_not_fire():
    check_golden(TwoLinear(), FoldMasksPass(), TwoLinear(), X)


def test_fold_leaves_input_program_untouched():
    masked = with_masks(export_module(TwoLinear(), X))
    before = masked.state_dict["fc1.weight"].clone()
    FoldMasksPass()(masked)
    assert torch.equal(masked.state_dict["fc1.weight"], before)
    assert "fc1.weight_mask" in masked.constants


# -- ComputeMasksPass / VerifySparsityPass ---------------------------------------------


def test_compute_masks_unknown_weight_is_a_precondition_error():
    check_golden(TwoLinear(), ComputeMasksPass([MaskSpec("fc9.weight", NM24, 0.5)]), PreconditionError, X)
    with pytest.raises(PreconditionError, match=r"ComputeMasksPass.*fc9\.weight"):
        ComputeMasksPass([MaskSpec("fc9.weight", NM24, 0.5)])(export_module(TwoLinear(), X))


def test_compute_masks_incompatible_pattern_names_pass_and_node():
    program = export_module(TwoLinear(), X)
    bad = ComputeMasksPass([MaskSpec("fc1.weight", SparsityPattern.blocks(5, 5), 0.5)])
    with pytest.raises(PassError) as e:
        bad(program)
    assert "ComputeMasksPass" in str(e.value) and "p_fc1_weight" in str(e.value)
    assert "5x5" in str(e.value)


def test_verify_passes_and_records_achieved():
    program = with_masks(export_module(TwoLinear(), X))
    check_golden(TwoLinear(), VerifySparsityPass(), TwoLinearMasked(), X, prepare=with_masks)
    from sparsecc import mask_specs

    specs = mask_specs(VerifySparsityPass()(program).program)
    assert {s.achieved for s in specs.values()} == {0.5}


def test_verify_catches_a_broken_pattern():
    program = FoldMasksPass()(with_masks(export_module(TwoLinear(), X))).program
    ed = ProgramEditor(program)  # break one 2:4 group of fc2 behind the program's back
    w = ed.tensor("fc2.weight").detach().clone()
    w[3, 4:8] = 1.0
    ed.set_tensor("fc2.weight", w)
    broken = ed.finish()
    with pytest.raises(SparsityVerificationError) as e:
        VerifySparsityPass()(broken)
    assert e.value.violations[0][0] == "fc2.weight"
    assert "group" in e.value.violations[0][1] and "4 nonzeros" in e.value.violations[0][1]


def test_verify_without_specs_does_not_fire():
    check_golden(TwoLinear(), VerifySparsityPass(), TwoLinear(), X)

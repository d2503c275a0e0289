"""Prunable-weight discovery from the graph: roles, axes, FLOPs, ties, order."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparsecc import find_prunable_weights
from sparsecc.testing import export_module


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, groups=8, padding=1)
        self.fc = nn.Linear(8, 16)
        self.w_right = nn.Parameter(torch.randn(16, 12))  # x @ W: W is [K=16, N=12]
        self.w_left = nn.Parameter(torch.randn(6, 12))  # W @ x: W is [N=6, K=12]
        self.w_t = nn.Parameter(torch.randn(5, 12))  # x @ W.t(): W is [N=5, K=12]
        self.bias = nn.Parameter(torch.zeros(5))
        self.deconv = nn.ConvTranspose2d(8, 4, 2)

    def forward(self, img):
        h = self.dw(self.conv(img))
        up = self.deconv(h)
        v = self.fc(h.mean((2, 3)))  # [B, 16]
        r = v @ self.w_right  # [B, 12]
        left = self.w_left @ r.t()  # [6, B]
        t = torch.addmm(self.bias, r, self.w_t.t())  # [B, 5]
        return up.sum() + left.sum() + t.sum()


def _by_fqn(program):
    return find_prunable_weights(program).by_fqn()


def test_roles_axes_and_flops():
    program = export_module(Mixed(), (torch.randn(2, 4, 8, 8),))
    w = _by_fqn(program)
    assert set(w) == {"conv.weight", "dw.weight", "fc.weight", "w_right", "w_left", "w_t"}
    conv = w["conv.weight"]
    assert (conv.role, conv.reduction_axis, conv.output_axis, conv.groups) == ("conv", 1, 0, 1)
    assert conv.flops == 2 * (2 * 8 * 8 * 8) * (4 * 3 * 3)  # 2 * out numel * K
    assert w["dw.weight"].groups == 8
    fc = w["fc.weight"]
    assert (fc.role, fc.reduction_axis, fc.output_axis, fc.flops) == ("linear", 1, 0, 2 * 2 * 16 * 8)
    assert (w["w_right"].role, w["w_right"].reduction_axis, w["w_right"].output_axis) == ("matmul", 0, 1)
    assert (w["w_left"].reduction_axis, w["w_left"].output_axis) == (1, 0)
    # through a transpose the axes swap back into the parameter's own layout
    assert (w["w_t"].reduction_axis, w["w_t"].output_axis) == (1, 0)
    assert w["fc.weight"].layer == "fc"


def test_transposed_conv_is_reported_not_prunable():
    program = export_module(Mixed(), (torch.randn(2, 4, 8, 8),))
    skipped = {s.fqn: s.reason for s in find_prunable_weights(program).skipped}
    assert "deconv.weight" in skipped and "ConvTranspose" in skipped["deconv.weight"]


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.body = nn.Linear(16, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(self.body(self.emb(ids)))


def test_tied_weight_records_its_other_uses():
    program = export_module(Tied(), (torch.randint(0, 50, (2, 5)),))
    w = find_prunable_weights(program).weights
    tied = [x for x in w if x.tied]
    assert len(tied) == 1 and "embedding" in tied[0].tied_uses[0]
    assert not next(x for x in w if x.fqn == "body.weight").tied


class Reordered(nn.Module):
    """Registered a, b; executed b then a: analysis lists execution order."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, x):
        return self.a(self.b(x))


def test_weights_are_in_execution_order():
    program = export_module(Reordered(), (torch.randn(2, 8),))
    assert [w.fqn for w in find_prunable_weights(program).weights] == ["b.weight", "a.weight"]


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 4))

    def forward(self, x):
        return F.linear(x, self.w)


def test_functional_weights_are_found():
    program = export_module(Functional(), (torch.randn(3, 4),))
    (w,) = find_prunable_weights(program).weights
    assert (w.fqn, w.role, w.reduction_axis) == ("w", "linear", 1)


def test_dynamic_dims_use_the_example_size_for_flops():
    program = torch.export.export(
        nn.Linear(4, 8), (torch.randn(3, 4),), dynamic_shapes=({0: torch.export.Dim("b")},), strict=False
    )
    (w,) = find_prunable_weights(program).weights
    assert w.flops == 2 * 3 * 8 * 4


class Lookup(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, ids):
        return self.fc(self.emb(ids))


def test_embedding_tables_are_found_with_their_own_role():
    program = export_module(Lookup(), (torch.randint(0, 20, (2, 3)),))
    w = find_prunable_weights(program).by_fqn()
    emb = w["emb.weight"]
    assert (emb.role, emb.reduction_axis, emb.output_axis, emb.flops, emb.tied) == ("embedding", 1, 0, 0, False)


def test_embedding_tables_stay_dense_unless_the_recipe_asks():
    from sparsecc.plan.recipe import load_recipe, plan_masks

    analysis = find_prunable_weights(export_module(Lookup(), (torch.randint(0, 20, (2, 3)),)))
    plan = plan_masks(load_recipe({"pattern": "unstructured", "sparsity": 0.5}), analysis)
    assert [s.fqn for s in plan.specs] == ["fc.weight"]
    assert "include_embeddings" in plan.skipped["emb.weight"]
    plan = plan_masks(
        load_recipe({"pattern": "unstructured", "sparsity": 0.5, "layers": {"include_embeddings": True}}), analysis
    )
    assert {s.fqn for s in plan.specs} == {"emb.weight", "fc.weight"}

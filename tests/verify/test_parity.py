"""Parity helpers: comparison relative to the output's scale, shape variants from declared dims, stored references."""

import torch
from torch.export import Dim, export

from sparsecc.verify.parity import (
    PARITY_ATOL, PARITY_RTOL, compare, load_reference, padding_mask, save_reference, shape_variants,
)


def test_compare_is_relative_to_the_outputs_scale():
    want = torch.tensor([100.0, 1e-6])
    ok = compare([want + torch.tensor([PARITY_RTOL * 50, 0.0])], [want], "x")
    bad = compare([want + torch.tensor([PARITY_RTOL * 200, 0.0])], [want], "x")
    assert ok["ok"] and not bad["ok"]
    assert bad["outputs"][0]["max_abs_err"] > PARITY_ATOL + PARITY_RTOL * 100
    assert not compare([torch.zeros(3)], [torch.zeros(2)], "x")["ok"]  # a shape mismatch is named, not passed


def test_compare_leaves_out_padded_positions_only():
    ids = torch.randint(0, 50, (2, 4))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    want = torch.randn(2, 4, 8)
    padded_off, real_off = want.clone(), want.clone()
    padded_off[0, 3] += 1.0  # a padded query's logits
    real_off[1, 1, 2] += 1.0  # a real token's
    case = compare([padded_off], [want], "x", inputs=[ids, mask])
    assert case["ok"] and case["padding_excluded"] == 3
    assert not compare([real_off], [want], "x", inputs=[ids, mask])["ok"]
    assert not compare([padded_off], [want], "x")["ok"]  # without the inputs every position counts
    # An output not shaped [batch, seq, ...] is compared whole.
    assert not compare([torch.ones(3) + 1], [torch.ones(3)], "x", inputs=[ids, mask])["ok"]
    assert padding_mask([ids, torch.ones(2, 4, dtype=torch.int64)]) is None  # nothing padded
    assert padding_mask([torch.ones(2, 4)]) is None  # a float input is not a mask


def test_shape_variants_give_padding_masks_not_random_holes():
    class M(torch.nn.Module):
        def forward(self, ids, attention_mask):
            return ids * attention_mask

    ids, mask = torch.randint(3, 9, (2, 5)), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    b, s = Dim("batch", min=1, max=16), Dim("seq", min=2, max=32)
    program = export(M(), (ids, mask), dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}))
    for _label, (_ids, m), _k in shape_variants(program, (ids, mask), {}):
        assert m.dtype == mask.dtype and bool((m[:, 0] == 1).all())  # every row keeps its first token
        assert torch.equal(m, m.cummin(-1).values)  # ones, then zeros


def test_shape_variants_cover_the_smallest_and_each_largest_dim():
    class M(torch.nn.Module):
        def forward(self, ids, x):
            return x.sum(-1) + ids.float()

    ids, x = torch.randint(3, 9, (2, 5)), torch.randn(2, 5, 4)
    b, s = Dim("batch", min=1, max=8), Dim("seq", min=2, max=32)
    program = export(M(), (ids, x), dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}))
    sets = shape_variants(program, (ids, x), {}, {str(k): str(k) for k in program.range_constraints})
    shapes = [(tuple(a[0].shape), tuple(a[1].shape)) for _label, a, _k in sets]
    assert shapes == [((1, 2), (1, 2, 4)), ((8, 5), (8, 5, 4)), ((2, 32), (2, 32, 4))]
    for _label, a, _k in sets:
        assert a[0].dtype == torch.int64 and 3 <= int(a[0].min()) and int(a[0].max()) <= 8  # ids stay in range
        program.module()(*a)  # every variant is an allowed shape


def test_reference_round_trip(tmp_path):
    sets = [("example", [torch.ones(2)], [torch.zeros(3)]), ("big", [torch.ones(4)], [torch.ones(1), torch.ones(2)])]
    stored = save_reference(tmp_path / "ref.npz", sets)
    assert stored == [True, True]
    back = load_reference(tmp_path / "ref.npz")
    assert [len(back[1][0]), len(back[1][1])] == [1, 2]
    assert torch.equal(back[0][1][0], torch.zeros(3))

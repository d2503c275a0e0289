"""Block-sparse attention through FlexAttention (the CUDA path of sparsecc::block_sparse_attention).

FlexAttention runs eagerly on a CPU (densely, as a reference), so its parity with
`reference_block_attention` is checked here on every configuration the op accepts;
the compiled GPU run is a `gpu` test.
"""

from __future__ import annotations

import pytest
import torch

from sparsecc.kernels.attention import clear_block_cache, reference_block_attention, select_blocks
from sparsecc.kernels.flex_attention import block_mask_from_kept, flex_available, flex_block_attention

pytestmark = [pytest.mark.skipif(not flex_available(), reason="this torch has no FlexAttention"),
              pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")]


def _qkv(b, h, hk, sq, sk, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, sq, d, generator=g), torch.randn(b, hk, sk, d, generator=g),
            torch.randn(b, hk, sk, d, generator=g))


def _padding(b, sk, keep):
    m = torch.zeros(b, 1, 1, sk, dtype=torch.bool)
    for i, n in enumerate(keep):
        m[i, ..., :n] = True
    return m


CASES = {
    "plain": dict(b=2, h=2, hk=2, sq=256, sk=256, causal=False, mask=None),
    "causal, short last block": dict(b=1, h=2, hk=2, sq=200, sk=200, causal=True, mask=None),
    "grouped query heads": dict(b=1, h=4, hk=2, sq=128, sk=128, causal=True, mask=None),
    "padding mask (bool)": dict(b=2, h=2, hk=2, sq=192, sk=192, causal=False, mask="bool"),
    "additive float mask": dict(b=1, h=2, hk=2, sq=128, sk=128, causal=False, mask="float"),
    "fewer queries than keys": dict(b=1, h=2, hk=2, sq=64, sk=200, causal=False, mask=None),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_eager_flex_equals_the_reference(case, tau):
    c = CASES[case]
    q, k, v = _qkv(c["b"], c["h"], c["hk"], c["sq"], c["sk"])
    mask = None
    if c["mask"] == "bool":
        mask = _padding(c["b"], c["sk"], [c["sk"], 70])  # the second sequence: 70 real tokens
    elif c["mask"] == "float":
        mask = torch.randn(1, 1, c["sq"], c["sk"]) * 0.5
        mask[..., 100:] = torch.finfo(torch.float32).min
    kept = select_blocks(q, k, mask, c["causal"], 0.2, 64, tau)
    want = reference_block_attention(q, k, v, mask, c["causal"], 0.2, 64, kept)
    got = flex_block_attention(q, k, v, mask, c["causal"], 0.2, 64, kept, compiled=False)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_rows_that_see_no_kept_block_give_zero_as_the_reference_does():
    q, k, v = _qkv(1, 1, 1, 128, 128)
    kept = torch.tensor([[[[False, False], [True, True]]]])
    got = flex_block_attention(q, k, v, None, False, 0.2, 64, kept, compiled=False)
    assert torch.equal(got[..., :64, :], torch.zeros_like(got[..., :64, :]))
    torch.testing.assert_close(got, reference_block_attention(q, k, v, None, False, 0.2, 64, kept))


def test_block_mask_visits_exactly_the_kept_blocks():
    kept = torch.tensor([[[[True, False, True], [False, True, False], [True, True, True]]]])
    bm = block_mask_from_kept(kept, 150, 150, 64)
    assert bm.kv_num_blocks.tolist() == [[[2, 1, 3]]]
    assert bm.kv_indices[0, 0, 0, :2].tolist() == [0, 2] and bm.kv_indices[0, 0, 1, 0].item() == 1
    with pytest.raises(ValueError, match="do not tile 300 x 150"):
        block_mask_from_kept(kept, 300, 150, 64)


def test_block_selection_makes_nothing_off_the_inputs_device():
    """select_blocks on meta tensors: any tensor it made on the CPU would fail the mix, as it would on CUDA."""
    q, k = torch.empty(1, 2, 200, 32, device="meta"), torch.empty(1, 2, 200, 32, device="meta")
    mask = torch.ones(1, 1, 1, 200, dtype=torch.bool, device="meta")
    for m, causal in ((None, False), (None, True), (mask, True)):
        clear_block_cache()
        assert select_blocks(q, k, m, causal, None, 64, 0.5).shape == (1, 2, 4, 4)


def test_the_op_has_a_cuda_kernel():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("sparsecc::block_sparse_attention", "CUDA")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_op_on_cuda_runs_compiled_flex_and_equals_the_reference():
    q, k, v = _qkv(1, 4, 2, 1024, 1024, d=64)
    clear_block_cache()
    want = torch.ops.sparsecc.block_sparse_attention(q, k, v, None, True, 0.125, 64, 0.9, False, 0, "")
    got = torch.ops.sparsecc.block_sparse_attention(q.cuda(), k.cuda(), v.cuda(), None, True, 0.125, 64, 0.9,
                                                    False, 0, "")
    torch.testing.assert_close(got.cpu(), want, rtol=2e-4, atol=2e-4)

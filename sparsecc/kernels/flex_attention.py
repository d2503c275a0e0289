"""Block-sparse attention through PyTorch's FlexAttention: the GPU path of ``sparsecc::block_sparse_attention``.

`select_blocks` gives the kept (query block, key block) pairs as ``bool [B, H, nQ, nK]``.
FlexAttention takes the same information as a ``BlockMask``: per query block,
how many key blocks to visit and which (``from_kv_blocks``), so its compiled
kernel (Triton on CUDA) never loads a skipped block. Inside a visited block the
``mask_mod`` hides what the reference hides (entries of skipped blocks, the
future under causality, a boolean attention mask) and a ``score_mod`` adds a
float attention mask, so the result equals `reference_block_attention`
wherever it runs: compiled on a GPU, or eagerly on a CPU (a slow reference
path, used by the tests).

Registered as the CUDA kernel of ``sparsecc::block_sparse_attention`` (see
`sparsecc.kernels.attention`): a program holding the op runs FlexAttention
once it is moved to a CUDA device. Where FlexAttention is missing (an older
torch) the op keeps its PyTorch reference on every device.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = ["flex_available", "block_mask_from_kept", "flex_block_attention"]

_MASKED = -1e30  # additive mask values at or below this hide their entry, as in sparsecc.kernels.attention


@functools.lru_cache(maxsize=1)
def _flex() -> Any:
    try:
        from torch.nn.attention import flex_attention as fa
    except ImportError:
        return None
    return fa


def flex_available() -> bool:
    """Does this torch have FlexAttention (``torch.nn.attention.flex_attention``)?"""
    return _flex() is not None


@functools.lru_cache(maxsize=1)
def _compiled() -> Any:
    # One compiled kernel for every call site: FlexAttention is only fast compiled, and compiling it
    # per call would cost seconds each time.
    return torch.compile(_flex().flex_attention, dynamic=False)


def block_mask_from_kept(kept: torch.Tensor, q_len: int, k_len: int, block: int, *, is_causal: bool = False,
                         attn_mask: torch.Tensor | None = None) -> Any:
    """A FlexAttention ``BlockMask`` that visits exactly the kept blocks of ``kept`` ``[B, H, nQ, nK]``.

    The ``mask_mod`` also hides skipped blocks entry by entry (eager FlexAttention reads
    only it), the future when ``is_causal``, and what a boolean ``attn_mask`` hides.
    """
    fa = _flex()
    b, h, nq, nk = kept.shape
    if (nq, nk) != (-(-q_len // block), -(-k_len // block)):
        raise ValueError(f"kept blocks {list(kept.shape)} do not tile {q_len} x {k_len} tokens in blocks of {block}")
    counts = kept.sum(-1, dtype=torch.int32)
    # kept key blocks first, in ascending order: a stable sort on "skipped"
    order = torch.sort((~kept).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)
    visible = None
    if attn_mask is not None:
        visible = attn_mask if attn_mask.dtype == torch.bool else attn_mask > _MASKED
        visible = _expand4(visible, b, h, q_len, k_len)

    def mask_mod(bi, hi, qi, ki):
        keep = kept[bi, hi, qi // block, ki // block]
        if is_causal:
            keep = keep & (ki <= qi)
        if visible is not None:
            keep = keep & visible[bi, hi, qi, ki]
        return keep

    return fa.BlockMask.from_kv_blocks(counts, order, BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(q_len, k_len))


def _expand4(mask: torch.Tensor, b: int, h: int, sq: int, sk: int) -> torch.Tensor:
    return mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape)).expand(b, h, sq, sk)


def flex_block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
                         is_causal: bool, scale: float, block: int, kept: torch.Tensor, *,
                         compiled: bool | None = None) -> torch.Tensor:
    """Softmax attention over the kept blocks only, by FlexAttention; equal to `reference_block_attention`.

    ``compiled`` (default: on CUDA) runs the ``torch.compile``-d kernel, which skips the
    blocks; eager FlexAttention computes the same result densely.
    """
    fa = _flex()
    if fa is None:
        raise RuntimeError(f"FlexAttention is not in torch {torch.__version__} (torch.nn.attention.flex_attention)")
    b, h, sq, _ = q.shape
    sk = k.shape[2]
    mask = block_mask_from_kept(kept, sq, sk, block, is_causal=is_causal, attn_mask=attn_mask)
    score_mod = None
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        bias = _expand4(attn_mask.to(q.dtype), b, h, sq, sk)

        def score_mod(score, bi, hi, qi, ki):
            return score + bias[bi, hi, qi, ki]

    run = _compiled() if (q.is_cuda if compiled is None else compiled) else fa.flex_attention
    return run(q, k, v, score_mod=score_mod, block_mask=mask, scale=scale, enable_gqa=k.shape[1] != h)

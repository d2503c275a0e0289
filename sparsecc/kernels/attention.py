"""Block-sparse attention: a training-free block mask from pooled scores, the reference op, the kernel call.

Query rows and key columns are cut into blocks of ``block`` tokens. `select_blocks`
mean-pools Q and K over each block, scores every (query block, key block) pair
with the pooled vectors (plus the log of how many of its entries the mask and
causality leave visible), takes a softmax over the key blocks of each query
block and keeps the smallest set of key blocks whose pooled mass reaches
``tau`` (the kept-mass threshold; ``tau >= 1`` keeps every visible block). The
diagonal block is always kept, and with ``sink`` the first one (an attention
sink); blocks that the mask or causality hide entirely are never kept.

Two ops are registered on import (no compilation needed):

- ``sparsecc::block_sparse_attention(q, k, v, attn_mask?, is_causal, scale, block, tau, sink, reuse, key)``:
  what `sparsecc.passes.BlockSparseAttentionPass` puts in the graph; its
  implementation is the PyTorch reference (dense scores with the skipped
  blocks masked out), so any program holding it runs and exports; on CUDA
  tensors it runs FlexAttention with the kept blocks as its block mask
  (`sparsecc.kernels.flex_attention`), which skips them;
- ``sparsecc::attention_blocks(q, k, attn_mask?, is_causal, scale, block, tau, sink, reuse, key)``:
  the block mask alone, ``bool [B, H, nQ, nK]``, which the torch-sparse backend
  feeds to the C++ kernel ``sparsecc::block_attention`` (``block_attention.cpp``;
  `sparsecc.kernels.block_attention` calls it).

``reuse = N > 0`` keeps the mask of call site ``key`` and recomputes it every
N-th call with the same shapes (AdaSpa's reuse of block indices across calls).
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F

from .flex_attention import flex_available, flex_block_attention

__all__ = [
    "MIN_BLOCK",
    "MAX_BLOCK",
    "check_block",
    "select_blocks",
    "kept_fraction",
    "reference_block_attention",
    "clear_block_cache",
    "check_attention_mask",
    "register_kernel_fake",
]

MIN_BLOCK, MAX_BLOCK = 8, 512
_MASKED = -1e30  # additive mask values at or below this hide their entry (finfo.min, -inf)
_cache: dict[tuple, list] = {}  # call site and shapes -> [kept, calls since computed]
# The last mask scanned and its counts: every layer of a forward passes the same mask tensor, and
# scanning [S, S] entries per layer costs as much as a sparse layer's attention at 2048 tokens.
# Holding the tensor keeps its identity unambiguous; its version counter catches in-place edits.
_last_mask: list = []


def check_block(block: int) -> None:
    """Raise ValueError unless ``block`` is a multiple of 8 in [8, 512] (what the kernel tiles)."""
    if isinstance(block, bool) or not isinstance(block, int) or not MIN_BLOCK <= block <= MAX_BLOCK or block % 8:
        raise ValueError(f"attention block must be a multiple of 8 in [{MIN_BLOCK}, {MAX_BLOCK}], got {block!r}")


def check_attention_mask(mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor) -> str | None:
    """Why ``mask`` cannot go with ``q``/``k`` (None when it can): float32 or bool, broadcastable to [B,H,Sq,Sk]."""
    if mask is None:
        return None
    if mask.dtype not in (torch.float32, torch.bool):
        return f"attention mask of dtype {mask.dtype} (float32 or bool supported)"
    full = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    if mask.dim() > 4:
        return f"attention mask with {mask.dim()} dims (at most 4)"
    for have, want in zip(reversed(mask.shape), reversed(full)):
        if have != 1 and have != want:
            return f"attention mask of shape {list(mask.shape)} does not broadcast to {list(full)}"
    return None


def _check(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, block: int, tau: float) -> None:
    check_block(block)
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"kept mass tau must lie in (0, 1], got {tau}")
    if q.dim() != 4 or k.dim() != 4 or q.shape[-1] != k.shape[-1] or q.shape[0] != k.shape[0]:
        raise ValueError(f"q and k must be [batch, heads, tokens, head_dim], got {list(q.shape)} and {list(k.shape)}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"{q.shape[1]} query heads cannot share {k.shape[1]} key heads")
    why = check_attention_mask(mask, q, k)
    if why is not None:
        raise ValueError(f"unsupported {why}")


def _pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean over each block of tokens: [B, H, S, D] -> [B, H, ceil(S / block), D] (a short last block included)."""
    s = x.shape[2]
    full = s // block
    parts = [x[:, :, : full * block].unflatten(2, (full, block)).mean(3)] if full else []
    if s % block:
        parts.append(x[:, :, full * block:].mean(2, keepdim=True))
    return torch.cat(parts, 2) if len(parts) > 1 else parts[0]


def _block_sum(x: torch.Tensor, block: int) -> torch.Tensor:
    """Sum of [.., Sq, Sk] over blocks -> [.., nQ, nK] (zero padding for short last blocks)."""
    sq, sk = x.shape[-2:]
    nq, nk = -(-sq // block), -(-sk // block)
    x = F.pad(x, (0, nk * block - sk, 0, nq * block - sq))
    return x.unflatten(-1, (nk, block)).unflatten(-3, (nq, block)).sum((-3, -1), dtype=torch.float32)


def _sizes(n: int, block: int) -> torch.Tensor:
    """Tokens in each block of ``n`` tokens (the last may be short)."""
    sizes = torch.full((-(-n // block),), float(block))
    sizes[-1] = n - block * (len(sizes) - 1)
    return sizes


@functools.lru_cache(maxsize=16)
def _causal_counts(sq: int, sk: int, block: int) -> torch.Tensor:
    """Visible entries of each block under top-left causality (column j <= row i): [nQ, nK]."""
    rows = torch.arange(sq).unsqueeze(1)
    cols = torch.arange(sk)
    return _block_sum(cols <= rows, block)


def _visible_counts(mask: torch.Tensor | None, is_causal: bool, q: torch.Tensor, k: torch.Tensor,
                    block: int) -> torch.Tensor | None:
    """Visible (row, column) entries per block, [B|1, H|1, nQ, nK]; None when all are (no mask, not causal)."""
    sq, sk = q.shape[2], k.shape[2]
    counts = None
    # inference tensors keep no version counter, so an in-place edit would go unseen: scan those each time
    memo = (mask._version, sq, sk, is_causal, block) if mask is not None and not mask.is_inference() else None
    if memo is not None and _last_mask and _last_mask[0] is mask and _last_mask[1] == memo:
        return _last_mask[2]
    if mask is not None:
        vis = mask if mask.dtype == torch.bool else mask > _MASKED
        while vis.dim() < 4:
            vis = vis.unsqueeze(0)
        vis = vis.expand(*vis.shape[:2], sq, sk)
        if is_causal:
            vis = vis & torch.ones(sq, sk, dtype=torch.bool, device=vis.device).tril()
        counts = _block_sum(vis, block)
        if memo is not None:
            _last_mask[:] = [mask, memo, counts]
    elif is_causal:
        counts = _causal_counts(sq, sk, block)[None, None].to(q.device)
    return counts


def select_blocks(q: torch.Tensor, k: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                  scale: float | None = None, block: int = 64, tau: float = 0.95,
                  sink: bool = False) -> torch.Tensor:
    """The kept blocks, ``bool [B, H, nQ, nK]`` (see the module docstring); ``scale`` defaults to 1/sqrt(D)."""
    _check(q, k, attn_mask, block, tau)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q, k = q.detach().float(), k.detach().float()
    b, h, sq, _ = q.shape
    dev = q.device  # every tensor made here lives beside q: the op also runs on CUDA
    nq, nk = -(-sq // block), -(-k.shape[2] // block)
    counts = _visible_counts(attn_mask, is_causal, q, k, block)
    if counts is None:
        allowed = torch.ones(1, 1, nq, nk, dtype=torch.bool, device=dev)
    else:
        allowed = counts > 0
        allowed = allowed | ~allowed.any(-1, keepdim=True)  # a query block that sees nothing: dense gives it all
    allowed = allowed.expand(b, h, nq, nk)
    diagonal = torch.eye(nq, nk, dtype=torch.bool, device=dev)
    if sink:
        diagonal[:, 0] = True
    if tau >= 1.0:
        return allowed.clone()
    pq = _pool(q, block)
    pk = _pool(k, block).repeat_interleave(h // k.shape[1], dim=1)
    logits = pq @ pk.transpose(-1, -2) * scale
    # a block's mass is about (visible entries) * exp(pooled score): short and half-hidden blocks weigh less
    if counts is None:
        counts = (_sizes(sq, block)[:, None] * _sizes(k.shape[2], block)[None, :])[None, None].to(dev)
    logits = logits + counts.clamp_min(1.0).log()
    logits = logits.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(logits, -1)
    sorted_p, order = p.sort(-1, descending=True)
    keep_sorted = (sorted_p.cumsum(-1) - sorted_p) < tau  # the mass before this block is still short of tau
    kept = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return (kept | diagonal) & allowed


def kept_fraction(kept: torch.Tensor, q_len: int, k_len: int, block: int, is_causal: bool = False) -> float:
    """Share of the (query, key) entries that the kept blocks cover, of those causality leaves (all if not causal)."""
    area = _sizes(q_len, block)[:, None] * _sizes(k_len, block)[None, :]
    if is_causal:
        area = _causal_counts(q_len, k_len, block)
    covered = (kept.float() * area).sum((-2, -1))
    return float((covered / area.sum()).mean())


def reference_block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
                              is_causal: bool, scale: float, block: int, kept: torch.Tensor) -> torch.Tensor:
    """Softmax attention over the kept blocks only, in plain PyTorch (rows that see nothing give 0)."""
    b, h, sq, _ = q.shape
    sk = k.shape[2]
    if k.shape[1] != h:
        k = k.repeat_interleave(h // k.shape[1], dim=1)
        v = v.repeat_interleave(h // v.shape[1], dim=1)
    s = q @ k.transpose(-1, -2) * scale
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask
    visible = kept.repeat_interleave(block, -2)[..., :sq, :].repeat_interleave(block, -1)[..., :sk]
    if is_causal:
        visible = visible & torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril()
    p = torch.softmax(s.masked_fill(~visible, float("-inf")), -1)
    return torch.nan_to_num(p, nan=0.0) @ v


def _cached_blocks(q, k, attn_mask, is_causal, scale, block, tau, sink, reuse, key) -> torch.Tensor:
    if reuse <= 0 or not key:
        return select_blocks(q, k, attn_mask, is_causal, scale, block, tau, sink)
    mask_shape = tuple(attn_mask.shape) if attn_mask is not None else None
    slot = (key, tuple(q.shape), tuple(k.shape), mask_shape, is_causal, block, tau, sink)
    entry = _cache.get(slot)
    if entry is None or entry[1] >= reuse:
        entry = _cache[slot] = [select_blocks(q, k, attn_mask, is_causal, scale, block, tau, sink), 0]
    entry[1] += 1
    return entry[0]


def clear_block_cache() -> None:
    """Forget every reused block mask (and the last attention mask scanned)."""
    _cache.clear()
    _last_mask.clear()


@torch.library.custom_op("sparsecc::attention_blocks", mutates_args=())
def _attention_blocks(q: torch.Tensor, k: torch.Tensor, attn_mask: Optional[torch.Tensor], is_causal: bool,
                      scale: float, block: int, tau: float, sink: bool, reuse: int, key: str) -> torch.Tensor:
    return _cached_blocks(q, k, attn_mask, is_causal, scale, block, tau, sink, reuse, key).clone()


@_attention_blocks.register_fake
def _(q, k, attn_mask, is_causal, scale, block, tau, sink, reuse, key):
    nq = (q.shape[2] + block - 1) // block
    nk = (k.shape[2] + block - 1) // block
    return q.new_empty((q.shape[0], q.shape[1], nq, nk), dtype=torch.bool)


@torch.library.custom_op("sparsecc::block_sparse_attention", mutates_args=())
def _block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor],
                            is_causal: bool, scale: float, block: int, tau: float, sink: bool, reuse: int,
                            key: str) -> torch.Tensor:
    kept = _cached_blocks(q, k, attn_mask, is_causal, scale, block, tau, sink, reuse, key)
    return reference_block_attention(q, k, v, attn_mask, is_causal, scale, block, kept)


@_block_sparse_attention.register_fake
def _(q, k, v, attn_mask, is_causal, scale, block, tau, sink, reuse, key):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


if flex_available():

    @_block_sparse_attention.register_kernel("cuda")
    def _(q, k, v, attn_mask, is_causal, scale, block, tau, sink, reuse, key):
        kept = _cached_blocks(q, k, attn_mask, is_causal, scale, block, tau, sink, reuse, key)
        return flex_block_attention(q, k, v, attn_mask, is_causal, scale, block, kept)


def register_kernel_fake() -> None:
    """The fake of the C++ op (called by the loader once the op exists), so programs holding it export."""

    @torch.library.register_fake("sparsecc::block_attention")
    def _(q, k, v, attn_mask, is_causal, scale, block, kept):
        return q.new_empty((*q.shape[:-1], v.shape[-1]))

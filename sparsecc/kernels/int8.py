"""int8 weights: per-output-channel symmetric quantization, and the int8 sparse kernels' weight format.

The weight of a layer ``[N, K]`` is quantized per output row: ``scale[n] =
max|W[n, :]| / 127`` and ``q = round(W / scale)`` in ``[-127, 127]``, zero
point 0, so a zero weight is the integer 0 and every sparsity pattern survives
quantization (values small enough to round to 0 only add zeros). The
dequantized weight ``q * scale`` is what a fake-quantized program holds.

`compress_int8` packs ``q`` for ``torch.ops.sparsecc.int8_linear``:

- BSR with square ``B x B`` blocks (``B`` in 4, 8, 16), a block stored when
  any of its entries is nonzero;
- ``1 x 4`` row groups (``block=(1, 4)``, the unstructured layout): for each
  output row, the runs of 4 consecutive input columns holding a nonzero. The
  AVX-512 VNNI instruction reduces 4 consecutive products per lane, so a
  group of 4 is the smallest unit it reads without shuffling activations.

The op quantizes the activations itself, per row (token): ``s_x[t] =
max|x[t, :]| / 127`` (or one static scale), accumulates ``q_x . q_w`` in
int32, and writes ``y = float(acc) * (s_x[t] * scale[n]) + bias[n]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "INT8_BLOCKS",
    "Int8Weight",
    "quantize_per_channel",
    "compress_int8",
    "int8_linear",
    "dense_int8_linear",
]

INT8_BLOCKS = ((1, 4), (4, 4), (8, 8), (16, 16))  # the layouts the int8 kernel has code for
QMAX = 127


def quantize_per_channel(weight: torch.Tensor, axis: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per slice along ``axis``: ``(q int8, scale float32 [weight.shape[axis]])``.

    An all-zero slice gets scale 1 (its integers are all 0 whatever the scale).
    """
    w = weight.detach().to(torch.float32)
    axis = axis % w.dim()
    reduce = [d for d in range(w.dim()) if d != axis]
    amax = w.abs().amax(dim=reduce) if reduce else w.abs()
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    shape = [1] * w.dim()
    shape[axis] = -1
    q = torch.round(w / scale.reshape(shape)).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale.contiguous()


@dataclass(frozen=True)
class Int8Weight:
    """A ``[rows, cols]`` int8 weight packed for the int8 kernel, with its per-row scales.

    ``values`` is ``[nnz_blocks, br, bc]`` int8; ``row_sums[n]`` is the sum of
    row ``n``'s stored integers (the VNNI path shifts activations by +128 and
    subtracts ``128 * row_sums[n]``).
    """

    crow_indices: torch.Tensor
    col_indices: torch.Tensor
    values: torch.Tensor
    scale: torch.Tensor
    row_sums: torch.Tensor
    shape: tuple[int, int]
    block: tuple[int, int]

    @property
    def nbytes(self) -> int:
        ts = (self.crow_indices, self.col_indices, self.values, self.scale, self.row_sums)
        return sum(t.numel() * t.element_size() for t in ts)

    def to_dense_int(self) -> torch.Tensor:
        """The int8 matrix ``[rows, cols]`` (as int32), zeros where no block is stored."""
        br, bc = self.block
        rows, cols = self.shape
        out = torch.zeros(rows // br, cols // bc, br, bc, dtype=torch.int32)
        counts = (self.crow_indices[1:] - self.crow_indices[:-1]).long()
        block_rows = torch.repeat_interleave(torch.arange(rows // br), counts)
        out[block_rows, self.col_indices.long()] = self.values.to(torch.int32)
        return out.permute(0, 2, 1, 3).reshape(rows, cols)


def compress_int8(q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | int = (1, 4)) -> Int8Weight:
    """Pack an int8 ``[rows, cols]`` weight (see `quantize_per_channel`) into ``block`` tiles.

    ``block`` is ``(1, 4)`` or a square 4, 8 or 16. Raises ValueError when the
    block does not divide the weight or is not one of `INT8_BLOCKS`.
    """
    br, bc = (block, block) if isinstance(block, int) else (int(block[0]), int(block[1]))
    if (br, bc) not in INT8_BLOCKS:
        raise ValueError(f"the int8 kernel has code for blocks {INT8_BLOCKS}, not {(br, bc)}")
    if q.dim() != 2 or q.dtype != torch.int8:
        raise ValueError(f"compress_int8 needs a 2-D int8 weight, got {q.dtype} {list(q.shape)}")
    rows, cols = q.shape
    if rows % br or cols % bc:
        raise ValueError(f"block {br}x{bc} does not divide the weight [{rows}, {cols}]")
    if scale.shape != (rows,):
        raise ValueError(f"scale must have one value per output row ({rows}), got {list(scale.shape)}")
    tiles = q.reshape(rows // br, br, cols // bc, bc).permute(0, 2, 1, 3)
    keep = tiles.ne(0).any(-1).any(-1)
    crow = torch.zeros(rows // br + 1, dtype=torch.int64)
    crow[1:] = keep.sum(1).cumsum(0)
    col = keep.nonzero()[:, 1]
    return Int8Weight(crow.to(torch.int32), col.to(torch.int32).contiguous(), tiles[keep].contiguous(),
                      scale.to(torch.float32).contiguous(), q.to(torch.int32).sum(1).to(torch.int32),
                      (rows, cols), (br, bc))


def int8_linear(x: torch.Tensor, w: Int8Weight, bias: torch.Tensor | None = None, act_scale: float = 0.0,
                isa: str = "") -> torch.Tensor:
    """``x @ dequant(W).T + bias`` with int8 activations (per row, or ``act_scale`` when > 0).

    ``isa`` forces an instruction set for this call (``avx512``, ``avx2``,
    ``portable``); empty uses the one the loader picked (`sparsecc.kernels.isa`).
    """
    from sparsecc.kernels import load

    load()
    return torch.ops.sparsecc.int8_linear(x, w.crow_indices, w.col_indices, w.values, w.scale, w.row_sums, bias,
                                          w.shape[0], float(act_scale), isa)


def dense_int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                      act_scale: float = 0.0, isa: str = "") -> torch.Tensor:
    """The same product with the weight dense: every ``1 x 4`` group stored (sparsecc's dense int8 kernel)."""
    rows, cols = q.shape
    groups = cols // 4
    w = Int8Weight(torch.arange(0, rows * groups + 1, groups, dtype=torch.int32),
                   torch.arange(groups, dtype=torch.int32).repeat(rows),
                   q.reshape(rows * groups, 1, 4).contiguous(), scale.to(torch.float32).contiguous(),
                   q.to(torch.int32).sum(1).to(torch.int32), (rows, cols), (1, 4))
    return int8_linear(x, w, bias, act_scale, isa)

"""CPU sparse kernels: sparse weight x dense activations, as torch operators.

The C++ source (``spmm.cpp`` + ``spmm_body.h``) is compiled once per machine
with `torch.utils.cpp_extension` (g++ and ninja; the build is cached under
``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``, and
rebuilt only when the source changes) and registers:

- ``torch.ops.sparsecc.sparse_linear(x, crow, col, values, bias, out_features, kernel)``:
  ``x[..., K] -> [..., N]``, the product with a ``[N, K]`` weight;
- ``torch.ops.sparsecc.sparse_conv1x1(x, crow, col, values, bias, out_channels, kernel)``:
  a 1x1 convolution (stride 1, no padding, one group) over ``x[B, Cin, H, W]``;
- ``torch.ops.sparsecc.kernel_isa(request)``: the instruction set in use;
- ``torch.ops.sparsecc.int8_linear(...)``: int8 sparse weight x int8
  activations (``int8_spmm.cpp``, the torch front end of the torch-free
  ``int8_driver.h`` / ``int8_isa.h`` / ``int8_body.h``; see `sparsecc.kernels.int8`),
  and ``int8_isa(request)``, the instruction set an int8 call runs with;
- ``torch.ops.sparsecc.act_sparse_linear(x, weight_t, bias, threshold)``: dense
  weight x sparse activations, skipping inputs with ``|x| <= threshold``
  (``act_sparse.cpp``; see `act_sparse_linear`);
- ``torch.ops.sparsecc.block_attention(q, k, v, attn_mask, is_causal, scale, block, kept)``:
  softmax attention over the kept key blocks only (``block_attention.cpp``; the
  block mask and the reference op are in `sparsecc.kernels.attention`).

``kernel`` is ``"csr"`` or ``"bsr"`` (sparsecc's kernels: AVX-512, AVX2+FMA
or portable code, picked from the CPU at load) or ``"torch_csr"`` /
``"torch_bsr"`` (torch's MKL-backed sparse products). The weight is given as
compressed tensors made once by `compress` (int32 indices; BSR values
``[nnz_blocks, B, B]``), so nothing is converted per call. Fake kernels are
registered too, so programs holding these ops export, save and load.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from sparsecc.errors import DependencyError
from sparsecc.kernels.attention import register_kernel_fake as _register_block_attention_fake
from sparsecc.kernels.int8 import (INT8_BLOCKS, Int8Weight, compress_int8, dense_int8_linear, int8_linear,
                                   quantize_per_channel)

__all__ = [
    "KERNELS",
    "OWN_BLOCKS",
    "CompressedWeight",
    "KernelBuildError",
    "compress",
    "load",
    "isa",
    "sparse_linear",
    "sparse_conv1x1",
    "int8_isa",
    "INT8_BLOCKS",
    "Int8Weight",
    "quantize_per_channel",
    "compress_int8",
    "int8_linear",
    "dense_int8_linear",
    "act_sparse_linear",
    "block_attention",
]

KERNELS = ("csr", "bsr", "torch_csr", "torch_bsr")
OWN_BLOCKS = (2, 4, 8, 16)  # BSR block sizes sparsecc's own kernel has code for
_SOURCE_DIR = Path(__file__).resolve().parent
_EXT_NAME = "sparsecc_cpu_kernels"


class KernelBuildError(DependencyError, RuntimeError):
    """The C++ kernels could not be compiled or loaded."""


@dataclass(frozen=True)
class CompressedWeight:
    """A ``[rows, cols]`` weight in CSR (``block == 1``) or BSR with square ``block x block`` tiles."""

    crow_indices: torch.Tensor
    col_indices: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]
    block: int

    @property
    def nnz(self) -> int:
        """Stored values (zeros inside stored blocks included)."""
        return int(self.values.numel())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.crow_indices, self.col_indices, self.values))

    def to_dense(self) -> torch.Tensor:
        layout = torch.sparse_csr if self.block == 1 else torch.sparse_bsr
        make = torch.sparse_csr_tensor if self.block == 1 else torch.sparse_bsr_tensor
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return make(self.crow_indices, self.col_indices, self.values, self.shape, layout=layout,
                        check_invariants=True).to_dense()


def compress(weight: torch.Tensor, block: int = 1) -> CompressedWeight:
    """Compress a 2-D float32 weight: CSR for ``block=1``, else BSR with square blocks.

    A block is stored when any of its entries is nonzero. Raises ValueError
    when the block does not divide the weight.
    """
    if weight.dim() != 2:
        raise ValueError(f"compress needs a 2-D weight, got shape {list(weight.shape)}")
    rows, cols = weight.shape
    if block < 1 or rows % block or cols % block:
        raise ValueError(f"block {block} does not divide the weight [{rows}, {cols}]")
    w = weight.detach().to(torch.float32).contiguous()
    if block == 1:
        with warnings.catch_warnings():  # torch calls its sparse CSR support beta
            warnings.simplefilter("ignore", UserWarning)
            s = w.to_sparse_csr()
    else:
        # to_sparse_bsr keeps every block; build the block mask ourselves so only nonzero blocks are stored
        tiles = w.reshape(rows // block, block, cols // block, block).permute(0, 2, 1, 3)
        keep = tiles.ne(0).any(-1).any(-1)
        crow = torch.zeros(rows // block + 1, dtype=torch.int64)
        crow[1:] = keep.sum(1).cumsum(0)
        col = keep.nonzero()[:, 1]
        values = tiles[keep].contiguous()
        return CompressedWeight(crow.to(torch.int32), col.to(torch.int32), values, (rows, cols), block)
    return CompressedWeight(
        s.crow_indices().to(torch.int32).contiguous(),
        s.col_indices().to(torch.int32).contiguous(),
        s.values().clone(),  # its own storage, not a view into the sparse tensor
        (rows, cols),
        1,
    )


@functools.cache
def load() -> None:
    """Compile (first time on this machine) and load the kernels; register fake kernels. Idempotent."""
    if hasattr(torch.ops.sparsecc, "sparse_linear") and _registered_here():
        return
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # the ninja wheel installs beside this Python, maybe not on PATH
        os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    sources = [str(_SOURCE_DIR / "spmm.cpp"), str(_SOURCE_DIR / "int8_spmm.cpp"), str(_SOURCE_DIR / "act_sparse.cpp"),
               str(_SOURCE_DIR / "block_attention.cpp")]
    try:
        built = any(Path(cpp_extension._get_build_directory(_EXT_NAME, verbose=False)).glob("*.so"))
    except Exception:  # a private helper of torch's: only decides whether to announce the build
        built = True
    if not built:
        print("sparsecc: compiling the CPU sparse kernels (once per machine, about a minute)...", file=sys.stderr)
    try:
        cpp_extension.load(
            name=_EXT_NAME,
            sources=sources,
            extra_include_paths=[str(_SOURCE_DIR)],
            extra_cflags=["-O3", "-fno-math-errno", "-fno-trapping-math"],
            extra_ldflags=[],
            is_python_module=False,
            verbose=bool(os.environ.get("SPARSECC_KERNELS_VERBOSE")),
        )
    except Exception as e:  # compiler missing, build failure
        raise KernelBuildError(
            f"could not build sparsecc's CPU sparse kernels from {sources[0]} ({type(e).__name__}: {e}); "
            "they need g++ and ninja on the PATH"
        ) from e
    _register_fakes()


def _registered_here() -> bool:
    return getattr(load, "_fakes", False)


def _register_fakes() -> None:
    @torch.library.register_fake("sparsecc::sparse_linear")
    def _(x, crow_indices, col_indices, values, bias, out_features, kernel, isa=""):
        return x.new_empty((*x.shape[:-1], out_features))

    @torch.library.register_fake("sparsecc::sparse_conv1x1")
    def _(x, crow_indices, col_indices, values, bias, out_channels, kernel, isa=""):
        torch._check(x.dim() == 4, lambda: f"sparse_conv1x1 needs a 4-D input, got {x.dim()}-D")
        return x.new_empty((x.shape[0], out_channels, x.shape[2], x.shape[3]))

    @torch.library.register_fake("sparsecc::int8_linear")
    def _(x, crow_indices, col_indices, values, wscale, row_sums, bias, out_features, act_scale, isa):
        return x.new_empty((*x.shape[:-1], out_features))

    @torch.library.register_fake("sparsecc::act_sparse_linear")
    def _(x, weight_t, bias, threshold):
        return x.new_empty((*x.shape[:-1], weight_t.shape[1]))

    _register_block_attention_fake()
    load._fakes = True  # type: ignore[attr-defined]


def isa(request: str = "") -> str:
    """The instruction set the kernels use (``avx512``, ``avx2``, ``portable``); ``request`` switches it."""
    load()
    return torch.ops.sparsecc.kernel_isa(request)


def sparse_linear(x: torch.Tensor, w: CompressedWeight, bias: torch.Tensor | None = None,
                  kernel: str | None = None, isa: str = "") -> torch.Tensor:
    """``x @ W.T + bias`` with ``W`` compressed; ``kernel`` defaults to sparsecc's own for ``w``'s format,
    ``isa`` to the loader's choice."""
    load()
    kernel = kernel or ("csr" if w.block == 1 else "bsr")
    return torch.ops.sparsecc.sparse_linear(x, w.crow_indices, w.col_indices, w.values, bias, w.shape[0], kernel,
                                            isa)


def sparse_conv1x1(x: torch.Tensor, w: CompressedWeight, bias: torch.Tensor | None = None,
                   kernel: str | None = None, isa: str = "") -> torch.Tensor:
    """A 1x1 convolution (stride 1, no padding) of ``x[B, Cin, H, W]`` with ``W [Cout, Cin]`` compressed."""
    load()
    kernel = kernel or ("csr" if w.block == 1 else "bsr")
    return torch.ops.sparsecc.sparse_conv1x1(x, w.crow_indices, w.col_indices, w.values, bias, w.shape[0], kernel,
                                             isa)


def int8_isa(request: str = "") -> str:
    """The instruction set an int8 call with ``isa=request`` runs (``""``: follows `isa`, narrowed to the CPU)."""
    load()
    return torch.ops.sparsecc.int8_isa(request)


def act_sparse_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      threshold: float = 0.0, *, weight_t: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` using only the inputs with ``|x| > threshold`` (``threshold < 0``: all).

    ``weight`` is ``[N, K]`` as in ``F.linear``; pass ``weight_t`` (``weight.T``,
    contiguous) instead to avoid transposing per call. With ``threshold=0`` the
    result is bitwise the kernel's dense result (``threshold=-1``): exact zeros
    change nothing when skipped.
    """
    load()
    wt = weight_t if weight_t is not None else weight.detach().t().contiguous()
    return torch.ops.sparsecc.act_sparse_linear(x, wt, bias, float(threshold))


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kept: torch.Tensor,
                    attn_mask: torch.Tensor | None = None, is_causal: bool = False, scale: float | None = None,
                    block: int = 64) -> torch.Tensor:
    """Attention over the ``kept`` blocks (``bool [B, H, nQ, nK]``, e.g. from
    `sparsecc.kernels.attention.select_blocks`) on the C++ kernel; fp32, ``scale`` defaults to 1/sqrt(D)."""
    load()
    return torch.ops.sparsecc.block_attention(q, k, v, attn_mask, is_causal,
                                              q.shape[-1] ** -0.5 if scale is None else float(scale), block, kept)

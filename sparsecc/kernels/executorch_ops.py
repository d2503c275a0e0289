"""The sparse ops as ExecuTorch custom operators, ahead of time: schemas, CPU and fake kernels.

`define_ops` (once per process; the helpers below call it) defines, in the ``sparsecc`` torch library
namespace::

    et_sparse_linear(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, Tensor? bias,
                     int out_features, int in_features) -> Tensor          # x[..., K] -> [..., N]
    et_sparse_conv1x1(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, Tensor? bias,
                      int out_channels, int in_channels) -> Tensor         # x[B, K, H, W] -> [B, N, H, W]

each with an ``.out`` overload (``..., *, Tensor(a!) out) -> Tensor(a!)``),
which ExecuTorch's emitter turns every call into and which
``libsparsecc_executorch.so`` implements at run time (`sparsecc.kernels.et_library`).
The weight is compressed as `sparsecc.kernels.compress` makes it (int32
indices; values ``[nnz]`` for CSR or ``[nnz_blocks, B, B]`` for BSR): the
format follows from the values' shape, so the schema has no string argument.
``in_features`` is there for the run-time check of the input's width: a CSR
weight does not know its column count, and a wider input would otherwise be
read at the wrong stride without any index going out of bounds.

The CPU kernels run the torch operators ``sparsecc::sparse_linear`` /
``sparse_conv1x1`` (the same C++ kernels); the fake kernels give shapes, so
programs holding these ops export and lower to EXIR.
"""

from __future__ import annotations

import torch

__all__ = ["LINEAR_OP", "CONV1X1_OP", "define_ops", "et_sparse_linear", "et_sparse_conv1x1"]

LINEAR_OP = "sparsecc::et_sparse_linear"
CONV1X1_OP = "sparsecc::et_sparse_conv1x1"
_ARGS = "Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, Tensor? bias, int {n}, int {k}"
_state: dict[str, object] = {}


def _kernel(values: torch.Tensor) -> str:
    return "csr" if values.dim() == 1 else "bsr"


def _linear(x, crow_indices, col_indices, values, bias, out_features, in_features):
    from sparsecc import kernels  # the package: loading compiles the torch operators once per machine

    torch._check(x.shape[-1] == in_features, lambda: f"{LINEAR_OP}: input must end in in_features = "
                 f"{in_features} columns, got {x.shape[-1]}")
    kernels.load()
    return torch.ops.sparsecc.sparse_linear(x, crow_indices, col_indices, values, bias, out_features,
                                            _kernel(values))


def _conv1x1(x, crow_indices, col_indices, values, bias, out_channels, in_channels):
    from sparsecc import kernels

    torch._check(x.dim() == 4 and x.shape[1] == in_channels, lambda: f"{CONV1X1_OP}: input must be "
                 f"[B, in_channels = {in_channels}, H, W], got {list(x.shape)}")
    kernels.load()
    return torch.ops.sparsecc.sparse_conv1x1(x, crow_indices, col_indices, values, bias, out_channels,
                                             _kernel(values))


def _linear_shape(x: torch.Tensor, n: int, k: int) -> tuple:
    torch._check(x.dim() >= 1 and x.shape[-1] == k, lambda: f"{LINEAR_OP}: input must end in in_features = {k} "
                 f"columns, got {list(x.shape)}")
    return (*x.shape[:-1], n)


def _conv_shape(x: torch.Tensor, n: int, k: int) -> tuple:
    torch._check(x.dim() == 4 and x.shape[1] == k, lambda: f"{CONV1X1_OP}: input must be [B, in_channels = {k}, "
                 f"H, W], got {list(x.shape)}")
    return (x.shape[0], n, x.shape[2], x.shape[3])


def define_ops() -> None:
    """Define the two ops and their ``.out`` overloads, once per process."""
    if _state.get("lib") is not None:
        return
    lib = torch.library.Library("sparsecc", "FRAGMENT")  # the C++ torch operators define the namespace too
    for name, n, k, fn, shape in (("et_sparse_linear", "out_features", "in_features", _linear, _linear_shape),
                                  ("et_sparse_conv1x1", "out_channels", "in_channels", _conv1x1, _conv_shape)):
        args = _ARGS.format(n=n, k=k)
        lib.define(f"{name}({args}) -> Tensor")
        lib.define(f"{name}.out({args}, *, Tensor(a!) out) -> Tensor(a!)")

        def functional(x, crow_indices, col_indices, values, bias, n_out, k_in, _fn=fn):
            return _fn(x, crow_indices, col_indices, values, bias, n_out, k_in)

        def out_variant(x, crow_indices, col_indices, values, bias, n_out, k_in, *, out, _fn=fn):
            y = _fn(x, crow_indices, col_indices, values, bias, n_out, k_in)
            out.resize_(y.shape)
            return out.copy_(y)

        def fake(x, crow_indices, col_indices, values, bias, n_out, k_in, _shape=shape):
            return x.new_empty(_shape(x, n_out, k_in))

        def fake_out(x, crow_indices, col_indices, values, bias, n_out, k_in, *, out, _shape=shape):
            out.resize_(_shape(x, n_out, k_in))
            return out

        lib.impl(name, functional, "CPU")
        lib.impl(f"{name}.out", out_variant, "CPU")
        torch.library.register_fake(f"sparsecc::{name}", fake, lib=lib)
        torch.library.register_fake(f"sparsecc::{name}.out", fake_out, lib=lib)
    _state["lib"] = lib  # the registrations live as long as this object


def et_sparse_linear(x: torch.Tensor, crow_indices: torch.Tensor, col_indices: torch.Tensor, values: torch.Tensor,
                     bias: torch.Tensor | None, out_features: int, in_features: int) -> torch.Tensor:
    """``x @ W.T + bias`` with ``W [out_features, in_features]`` compressed (CSR or BSR)."""
    define_ops()
    return torch.ops.sparsecc.et_sparse_linear(x, crow_indices, col_indices, values, bias, out_features,
                                               in_features)


def et_sparse_conv1x1(x: torch.Tensor, crow_indices: torch.Tensor, col_indices: torch.Tensor, values: torch.Tensor,
                      bias: torch.Tensor | None, out_channels: int, in_channels: int) -> torch.Tensor:
    """A 1x1 convolution (stride 1, no padding, one group) of NCHW ``x`` with ``W [out_channels, in_channels]``
    compressed."""
    define_ops()
    return torch.ops.sparsecc.et_sparse_conv1x1(x, crow_indices, col_indices, values, bias, out_channels,
                                                in_channels)

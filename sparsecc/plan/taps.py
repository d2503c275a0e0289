"""Which activation multiplies a weight, and how to read it as a ``[rows, K]`` matrix.

Columns follow the weight viewed as ``as_matrix(weight, output_axis,
reduction_axis).reshape(out, -1)``: input features for a linear, ``(kh, kw,
cin)`` for a conv (unfolded, "same" padding made explicit, grouped convs as
``[groups, rows, K_g]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F

from sparsecc.plan.calibration_data import CalibrationError

__all__ = ["Tap", "tap_for", "activation_matrix"]

aten = torch.ops.aten


@dataclass(frozen=True)
class Tap:
    """How to read the activation of one consumer node as rows x columns."""

    kind: str  # "rows_last" (x[..., K]), "rows_first" (W @ x: x[K, ...]), "conv"
    operand: int  # index of the activation in node.args
    conv: tuple | None = None  # (kernel, stride, padding, dilation, groups)

    def key(self, node: torch.fx.Node) -> tuple:
        act = node.args[self.operand]
        return (getattr(act, "name", str(act)), self.kind, self.conv)


def _conv_params(node: torch.fx.Node, weight_shape: tuple[int, ...]) -> tuple:
    a, kw = node.args, node.kwargs

    def arg(i: int, name: str, default: Any) -> Any:
        return a[i] if len(a) > i else kw.get(name, default)

    spatial = len(weight_shape) - 2
    kernel = tuple(weight_shape[2:])

    def tup(v: Any) -> tuple:
        return tuple(v) if isinstance(v, (list, tuple)) else (v,) * spatial

    if node.target == aten.convolution.default:
        stride, padding, dilation, groups = tup(a[3]), tup(a[4]), tup(a[5]), int(a[8])
    else:
        stride, padding, dilation = tup(arg(3, "stride", 1)), arg(4, "padding", 0), tup(arg(5, "dilation", 1))
        groups = int(arg(6, "groups", 1))
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0,) * spatial
            elif padding == "same":
                padding = tuple(("same", d * (k - 1)) for d, k in zip(dilation, kernel))
            else:
                raise CalibrationError(f"{node.name}: unknown conv padding {padding!r}")
        else:
            padding = tup(padding)
    return kernel, stride, tuple(padding), dilation, groups


def tap_for(node: torch.fx.Node, weight_operand: torch.fx.Node, role: str, shape: tuple[int, ...]) -> Tap:
    t, args = node.target, node.args
    if role == "linear":
        return Tap("rows_last", 0)
    if role == "conv":
        spatial = len(shape) - 2
        if spatial not in (1, 2):
            raise CalibrationError(f"{node.name}: calibration supports 1-D and 2-D convolutions, not {spatial}-D")
        return Tap("conv", 0, _conv_params(node, shape))
    if role == "matmul":
        a, b = (1, 2) if t == aten.addmm.default else (0, 1)
        if args[b] is weight_operand:
            return Tap("rows_last", a)
        return Tap("rows_first", b)
    raise CalibrationError(f"{node.name}: no activation to calibrate for a {role} weight")


def activation_matrix(x: torch.Tensor, tap: Tap) -> torch.Tensor:
    """The activation as ``[rows, K]`` (or ``[groups, rows, K_g]`` for grouped convs), float32."""
    x = x.detach().float()
    if tap.kind == "rows_last":
        return x.reshape(-1, x.shape[-1])
    if tap.kind == "rows_first":
        return x.movedim(0, -1).reshape(-1, x.shape[0])
    kernel, stride, padding, dilation, groups = tap.conv  # type: ignore[misc]
    if len(kernel) == 1:  # conv1d as a 2-D conv of height 1
        x = x.unsqueeze(2)
        kernel, stride, dilation = (1, *kernel), (1, *stride), (1, *dilation)
        padding = ((0,) if not isinstance(padding[0], tuple) else (("same", 0),)) + tuple(padding)
    if any(isinstance(p, tuple) for p in padding):  # "same": pad explicitly, asymmetric if odd
        pads: list[int] = []
        for p in reversed(padding):
            total = p[1] if isinstance(p, tuple) else 2 * p
            pads += [total // 2, total - total // 2]
        x = F.pad(x, pads)
        padding = (0,) * len(kernel)
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # [B, C*kh*kw, L]
    b, _, length = cols.shape
    cin = x.shape[1]
    kk = math.prod(kernel)
    cols = cols.reshape(b, groups, cin // groups, kk, length)
    # as_matrix order of a conv weight is (kh, kw, cin): kernel position outer, channel inner.
    cols = cols.permute(1, 0, 4, 3, 2).reshape(groups, b * length, kk * (cin // groups))
    return cols[0] if groups == 1 else cols

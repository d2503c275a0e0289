"""Index-by-index ops: elementwise maps with broadcasting, creation ops, masks by position, padding."""

from __future__ import annotations

import torch.fx

from .base import Rule, Walker, value_of, flatten

__all__ = ["Elementwise", "Create", "Triangular", "Pad"]

ELEMENTWISE = {
    # unary
    "relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "hardtanh", "hardswish", "hardsigmoid",
    "relu6", "leaky_relu", "elu", "selu", "celu", "mish", "softplus", "neg", "exp", "log", "log1p",
    "expm1", "rsqrt", "sqrt", "abs", "sin", "cos", "erf", "reciprocal", "square", "clamp", "clamp_min",
    "clamp_max", "round", "sign", "floor", "ceil", "logical_not", "bitwise_not", "clone", "contiguous",
    "alias", "detach", "dropout", "to", "_to_copy", "type_as", "lift_fresh_copy", "zeros_like",
    "ones_like", "full_like", "empty_like", "rand_like", "randn_like", "isnan", "isinf", "nan_to_num",
    # binary / ternary with broadcasting
    "add", "sub", "mul", "div", "rsub", "pow", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge",
    "__and__", "__or__", "__xor__", "bitwise_and", "bitwise_or", "bitwise_xor", "logical_and",
    "logical_or", "where", "masked_fill", "fmod", "remainder", "floor_divide", "atan2", "lerp",
    "addcmul", "addcdiv", "copysign", "hypot",
}
CREATE = {
    "arange", "ones", "zeros", "full", "empty", "new_ones", "new_zeros", "new_full", "new_empty",
    "scalar_tensor", "rand", "randn", "tensor", "linspace", "eye", "empty_strided", "randint",
}


class Elementwise(Rule):
    """Elementwise ops: every operand axis of size > 1 is the output's axis (broadcasting)."""

    ops = frozenset(ELEMENTWISE)

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, kw, out, why = node.args, node.kwargs, walk.dims[node.name], node.name
        tensors = [a for a in list(args) + list(kw.values()) if isinstance(value_of(a), torch.Tensor)]
        walk.broadcast(node, out, tensors, why)


class Create(Rule):
    """Tensors created with a fixed size: their axes cannot shrink."""

    ops = frozenset(CREATE)

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        out, why = walk.dims[node.name], node.name
        for atom in flatten(out):
            walk.A.pin(atom, f"{why}: created with a fixed size by {name}")


class Triangular(Rule):
    """``triu``/``tril``: the last two axes are positions, kept whole."""

    ops = frozenset({"triu", "tril"})

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, out, why = node.args, walk.dims[node.name], node.name
        x = walk.d(args[0])
        for i, (a, o) in enumerate(zip(x, out)):
            walk.A.unify(a, o, why)
            if i >= len(x) - 2:
                walk.A.pin(a, f"{why}: {name} depends on positions")


class Pad(Rule):
    """Padding: padded axes are pinned, the others pass through."""

    ops = frozenset({"pad", "constant_pad_nd", "reflection_pad2d", "replication_pad2d", "reflection_pad1d", "replication_pad1d"})

    def propagate(self, walk: Walker, node: torch.fx.Node, name: str) -> None:
        args, out, why = node.args, walk.dims[node.name], node.name
        x = walk.d(args[0])
        pads = list(args[1])
        padded = {len(x) - 1 - i // 2 for i, v in enumerate(pads) if v != 0}
        for i, (a, o) in enumerate(zip(x, out)):
            if i in padded:
                walk.A.pin(a, f"{why}: padded axis")
                walk.A.pin(o, f"{why}: padded axis")
            else:
                walk.A.unify(a, o, why)

"""The ``quantize:`` recipe section, and static activation scales from calibration.

::

    pattern: "2:4"
    quantize:
      weights: int8           # per-output-channel symmetric, zero point 0: zeros stay zeros
      activations: dynamic    # dynamic (per token, at run time) | static (one scale per layer, calibrated)

Quantization composes with any pattern: a zero weight is the integer 0, so the
mask survives (see `sparsecc.passes.QuantizeWeightsPass`, which re-checks it).
``static`` takes its per-layer activation scale (``max|x| / 127`` over the
calibration batches) from `activation_absmax`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
import torch.fx
from torch.export import ExportedProgram

from sparsecc.errors import UsageError

__all__ = [
    "QuantizeOptions",
    "QuantizeError",
    "WEIGHT_DTYPES",
    "ACTIVATION_MODES",
    "parse_quantize",
    "activation_absmax",
]

WEIGHT_DTYPES = ("int8",)
ACTIVATION_MODES = ("dynamic", "static")
_KEYS = {"weights", "activations"}


class QuantizeError(UsageError, ValueError):
    """A ``quantize:`` section is invalid, or static scales cannot be calibrated."""


@dataclass(frozen=True)
class QuantizeOptions:
    weights: str = "int8"
    activations: str = "dynamic"

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_DTYPES:
            raise QuantizeError(f"quantize.weights: {self.weights!r} is not supported; choose from {WEIGHT_DTYPES}")
        if self.activations not in ACTIVATION_MODES:
            raise QuantizeError(
                f"quantize.activations: {self.activations!r} is not supported; choose from {ACTIVATION_MODES}")

    def to_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "activations": self.activations}


def parse_quantize(d: Any, error: type[Exception] = QuantizeError) -> QuantizeOptions:
    """A `QuantizeOptions` from the recipe's ``quantize:`` value; ``error(key, value, message)``
    may be the recipe's own error type, else `QuantizeError` with one message."""

    def fail(key: str, value: Any, message: str) -> Exception:
        if error is QuantizeError:
            return QuantizeError(f"recipe key '{key}': {value!r} {message}")
        return error(key, value, message)

    if isinstance(d, str):  # `quantize: int8` is shorthand for int8 weights, dynamic activations
        d = {"weights": d}
    if not isinstance(d, dict):
        raise fail("quantize", d, "must be a mapping {weights: int8, activations: dynamic|static}")
    for k in d:
        if k not in _KEYS:
            raise fail(f"quantize.{k}", d[k], f"is not a known key; known: {', '.join(sorted(_KEYS))}")
    weights = d.get("weights", "int8")
    if weights not in WEIGHT_DTYPES:
        raise fail("quantize.weights", weights, f"must be one of {', '.join(WEIGHT_DTYPES)}")
    acts = d.get("activations", "dynamic")
    if acts not in ACTIVATION_MODES:
        raise fail("quantize.activations", acts, f"must be one of {', '.join(ACTIVATION_MODES)}")
    return QuantizeOptions(weights, acts)


_aten = torch.ops.aten
_PRODUCTS = {_aten.linear.default, _aten.matmul.default, _aten.mm.default, _aten.addmm.default,
             _aten.conv2d.default, _aten.convolution.default, _aten.conv1d.default}
_VIEWS = {_aten.t.default, _aten.transpose.int, _aten.permute.default, _aten.numpy_T.default}


def _weight_of(node: torch.fx.Node, arg: Any) -> str | None:
    """The parameter FQN behind a product's operand (a ``get_attr``, possibly transposed)."""
    if isinstance(arg, torch.fx.Node) and arg.op == "call_function" and arg.target in _VIEWS:
        arg = arg.args[0]
    if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
        return str(arg.target)
    return None


class _AbsMax(torch.fx.Interpreter):
    def __init__(self, module: torch.fx.GraphModule, fqns: set[str]):
        super().__init__(module)
        self.fqns = fqns
        self.absmax: dict[str, float] = {}

    def run_node(self, node: torch.fx.Node) -> Any:
        if node.op == "call_function" and node.target in _PRODUCTS:
            addmm = node.target == _aten.addmm.default
            x_node, w_node = node.args[1:3] if addmm else node.args[:2]
            fqn = _weight_of(node, w_node)
            x = self.env.get(x_node) if isinstance(x_node, torch.fx.Node) else None
            if fqn in self.fqns and isinstance(x, torch.Tensor):
                m = float(x.detach().abs().max()) if x.numel() else 0.0
                self.absmax[fqn] = max(self.absmax.get(fqn, 0.0), m)
        return super().run_node(node)


def activation_absmax(program: ExportedProgram, fqns: Iterable[str],
                      batches: Sequence[tuple[tuple[Any, ...], dict[str, Any]]]) -> dict[str, float]:
    """``max|x|`` of the activation each weight in ``fqns`` multiplies, over the batches.

    Raises `QuantizeError` naming the weights no batch reached (a weight used
    other than as the right operand of a product).
    """
    if not batches:
        raise QuantizeError("static activation scales need at least one calibration batch")
    fqns = set(fqns)
    module = program.module()
    run = _AbsMax(module, fqns)
    with torch.no_grad():
        for args, kwargs in batches:
            flat = torch.utils._pytree.tree_leaves((args, kwargs))
            run.run(*flat)
    missing = sorted(fqns - set(run.absmax))
    if missing:
        raise QuantizeError(f"static activation scales: no activation recorded for {', '.join(missing[:5])}"
                            f"{' ...' if len(missing) > 5 else ''} (weights must feed a linear/matmul/conv)")
    return run.absmax

"""Swap 2:4-pruned linear weights for ``torch.sparse`` semi-structured tensors (GPU).

`swap_semi_structured(model)` walks every linear layer, checks it with
`eligibility.check_linear_weight`, and replaces the weight of each eligible
one by ``to_sparse_semi_structured(weight)``; ``F.linear`` / ``aten.linear``
then dispatch to the sparse kernel. Linear layers are the ``nn.Linear``
modules of an eager model, or, in a ``torch.fx.GraphModule`` such as a
sparsecc program's ``load_program(path).module()``, the ``aten.linear`` calls
whose weight is a stored parameter.

Eligible is not the same as faster: on an H200, torch's 2:4 kernels lose to
dense cuBLAS on every BERT-base shape and win only on LLM-sized products.
With ``tokens=N`` each eligible shape is timed once, dense against 2:4 at N
rows (`measure.measure_speedup`), and a layer is swapped only where 2:4 is
at least ``min_speedup`` times faster; the measured ratio goes in the report.

Layers that cannot run sparse stay dense, each with its reason in the
returned `SwapReport`. The model must already be on the GPU in
its inference dtype (``model.half().cuda()``); weights are frozen
(``requires_grad=False``): the compressed tensors are for inference.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .eligibility import WeightInfo, check_linear_weight, device_info, is_2_4

__all__ = ["SwapDecision", "SwapReport", "swap_semi_structured", "force_cutlass"]


@dataclass(frozen=True)
class SwapDecision:
    layer: str
    shape: tuple[int, ...]
    dtype: str
    swapped: bool
    reason: str
    backend: str
    speedup: float | None = None  # measured dense/2:4 time, when swap_semi_structured(tokens=...) timed it

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "shape": list(self.shape), "dtype": self.dtype, "swapped": self.swapped,
                "reason": self.reason, "backend": self.backend, "speedup": self.speedup}


@dataclass
class SwapReport:
    decisions: list[SwapDecision] = field(default_factory=list)

    @property
    def swapped(self) -> list[str]:
        return [d.layer for d in self.decisions if d.swapped]

    @property
    def dense(self) -> dict[str, str]:
        return {d.layer: d.reason for d in self.decisions if not d.swapped}

    def summary(self) -> str:
        return f"{len(self.swapped)} of {len(self.decisions)} linear layers run 2:4 semi-structured"

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "layers": [d.to_dict() for d in self.decisions]}


@contextlib.contextmanager
def force_cutlass(enabled: bool) -> Iterator[None]:
    """Choose CUTLASS (True) or cuSPARSELt (False) for tensors created inside the block."""
    from torch.sparse import SparseSemiStructuredTensor

    before = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = enabled
    try:
        yield
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = before


_LINEAR_OPS = (torch.ops.aten.linear.default, torch.nn.functional.linear)


def _linear_weights(model: nn.Module) -> Iterator[tuple[str, nn.Module | None, str, torch.Tensor | str]]:
    """(layer name, module owning the weight, attribute name, weight) for each linear layer.

    For a linear whose weight is computed in the graph (a mask multiply that was
    not folded), the owner is None and the last item says what computes it.
    """
    if isinstance(model, torch.fx.GraphModule):
        for node in model.graph.nodes:
            if node.op != "call_function" or node.target not in _LINEAR_OPS:
                continue
            weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
            stack = node.meta.get("nn_module_stack") or {}
            name = next(reversed(stack.values()))[0] if stack else node.name
            if not isinstance(weight, torch.fx.Node) or weight.op != "get_attr":
                what = getattr(weight, "target", weight)
                yield name, None, "", f"weight is computed in the graph (by {what}), not a stored parameter"
                continue
            owner_path, _, attr = weight.target.rpartition(".")
            yield name, model.get_submodule(owner_path), attr, getattr(model.get_submodule(owner_path), attr)
        return
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            yield name, module, "weight", module.weight


def _compress(weight: torch.Tensor, backend: str) -> nn.Parameter:
    from torch.sparse import to_sparse_semi_structured

    with force_cutlass(backend == "cutlass"), torch.no_grad():
        return nn.Parameter(to_sparse_semi_structured(weight.detach().contiguous()), requires_grad=False)


def swap_semi_structured(
    model: nn.Module,
    backend: str = "cusparselt",
    *,
    tokens: int | None = None,
    min_speedup: float = 1.05,
    timer: Callable[[torch.Tensor, torch.Tensor, int], float] | None = None,
) -> SwapReport:
    """Replace eligible linear weights in place; report every linear layer.

    ``model`` is an eager module (its ``nn.Linear`` layers) or a GraphModule
    (its ``aten.linear`` calls on stored weights). With ``tokens`` (the rows
    per product at deployment, batch x sequence), each eligible shape is
    timed once with ``timer`` (default `measure_speedup`: CUDA-graph replays)
    and swapped only where dense/2:4 time is at least ``min_speedup``.
    """
    if tokens is not None and tokens < 1:
        raise ValueError(f"tokens must be a positive number of rows per product, got {tokens}")
    if timer is None:
        from .measure import measure_speedup as timer
    measured: dict[tuple, float] = {}  # (shape, dtype, backend) -> speedup: kernel speed does not depend on values
    report = SwapReport()
    # id(dense weight) -> (decision, its replacement), for weights shared by several layers
    done: dict[int, tuple[SwapDecision, nn.Parameter | None]] = {}
    for name, owner, attr, w in list(_linear_weights(model)):  # read all weights before any swap
        if isinstance(w, str):
            report.decisions.append(SwapDecision(name, (), "", False, w, backend))
            continue
        if id(w) in done:
            first, replacement = done[id(w)]
            if replacement is not None:
                setattr(owner, attr, replacement)
            report.decisions.append(SwapDecision(name, first.shape, first.dtype, first.swapped,
                                                 f"shares its weight with {first.layer}: {first.reason}", first.backend,
                                                 first.speedup))
            continue
        info = WeightInfo(tuple(w.shape), w.dtype, is_2_4(w))
        verdict = check_linear_weight(info, device_info(w.device), backend)
        swapped, reason, speedup, replacement = verdict.eligible, verdict.reason, None, None
        if verdict.eligible:
            replacement = _compress(w, verdict.backend)
            if tokens is not None:
                key = (info.shape, w.dtype, verdict.backend)
                if key not in measured:
                    measured[key] = timer(w.detach(), replacement, tokens)
                speedup = measured[key]
                if speedup < min_speedup:
                    swapped, replacement = False, None
                    reason = (f"2:4 measured x{speedup:.2f} of dense at {tokens} tokens (needs x{min_speedup:.2f}): "
                              f"kept dense")
                else:
                    reason += f"; measured x{speedup:.2f} of dense at {tokens} tokens"
        if replacement is not None:
            setattr(owner, attr, replacement)
        decision = SwapDecision(name, info.shape, str(w.dtype).removeprefix("torch."), swapped, reason,
                                verdict.backend, speedup)
        done[id(w)] = (decision, replacement)
        report.decisions.append(decision)
    return report

"""Swap 2:4-pruned ``nn.Linear`` weights for ``torch.sparse`` semi-structured tensors (GPU).

`swap_semi_structured(model)` walks every ``nn.Linear``, checks it with
`eligibility.check_linear_weight`, and replaces the weight of each eligible
one by ``to_sparse_semi_structured(weight)``; ``F.linear`` then dispatches to
the sparse kernel. Layers that cannot run sparse stay dense, each with its
reason in the returned `SwapReport`. The model must already be on the GPU in
its inference dtype (``model.half().cuda()``); weights are frozen
(``requires_grad=False``): the compressed tensors are for inference.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

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

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "shape": list(self.shape), "dtype": self.dtype, "swapped": self.swapped,
                "reason": self.reason, "backend": self.backend}


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


def swap_semi_structured(model: nn.Module, backend: str = "cusparselt") -> SwapReport:
    """Replace eligible ``nn.Linear`` weights in place; report every linear layer."""
    from torch.sparse import to_sparse_semi_structured

    report = SwapReport()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        w = module.weight
        info = WeightInfo(tuple(w.shape), w.dtype, is_2_4(w))
        verdict = check_linear_weight(info, device_info(w.device), backend)
        dtype = str(w.dtype).removeprefix("torch.")
        if verdict.eligible:
            with force_cutlass(verdict.backend == "cutlass"), torch.no_grad():
                module.weight = nn.Parameter(to_sparse_semi_structured(w.detach().contiguous()), requires_grad=False)
        report.decisions.append(SwapDecision(name, info.shape, dtype, verdict.eligible, verdict.reason, verdict.backend))
    return report

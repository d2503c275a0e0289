"""A second opinion for an fp32 parity case that misses its bound: the program in float64.

Two correct fp32 runtimes drift apart with depth and reduction length: on
SmolLM2-135M (30 layers) at seq 2048 ONNX Runtime and PyTorch differ by
1.1e-4 of the logits' scale, past the fixed ``PARITY_RTOL``, on one CPU and
not on another. A fixed bound either fails such correct artifacts or has to be
so loose that it passes a subtly wrong kernel on a small model. So a case that
fails the fixed bound is judged again against the program run in float64,
which is the exact result up to 1e-16: the artifact passes when it is no more
than ``REFEREE_FACTOR`` times as far from it as PyTorch's own fp32 output is.
A wrong kernel is off by far more than fp32 rounding; a deep model's rounding
is measured, not guessed. Which runtime rounds closer varies: on SmolLM2 at
batch 2 x seq 2048, ONNX Runtime's largest distance to float64 was 0.58x
PyTorch's for the dense model and 2.7x for the 2:4 one (0.0063 against 0.0023,
at a logit scale of 35), hence a factor of 4 rather than 2.

- `float64_module` / `float64_outputs`: the program with every float computed
  in float64 (built once per target), and its outputs on one input set.
- `referee`: the case judged against those outputs, with the bound it passed
  at recorded (``rtol``) so `sparsecc verify` checks the stored outputs with it.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch.export import ExportedProgram
from torch.fx.node import map_aggregate

from sparsecc.core.program import tensor_leaves
from sparsecc.verify.parity import compare, padding_mask, unpadded

__all__ = ["REFEREE_FACTOR", "float64_module", "float64_outputs", "referee"]

REFEREE_FACTOR = 4.0


def float64_module(program: ExportedProgram) -> torch.fx.GraphModule:
    """``program`` as a module that computes every float in float64.

    The module is a copy (converting the program's own module would change the
    parameters it shares with the program); the graph's explicit float32 casts,
    such as an RMSNorm's upcast, become float64 casts so no step rounds back.
    """
    module = copy.deepcopy(program.module()).to(torch.float64)
    for node in module.graph.nodes:
        node.args, node.kwargs = (map_aggregate(x, lambda v: torch.float64 if v is torch.float32 else v)
                                  for x in (node.args, node.kwargs))
    module.recompile()
    return module


def float64_outputs(module: torch.fx.GraphModule, args: tuple, kwargs: dict | None) -> list[torch.Tensor]:
    """Flat outputs of a `float64_module` on (args, kwargs), float inputs widened to float64."""

    def widen(t: Any) -> Any:
        return t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    a = torch.utils._pytree.tree_map(widen, tuple(args))
    k = torch.utils._pytree.tree_map(widen, dict(kwargs or {}))
    with torch.no_grad():
        return tensor_leaves(module(*a, **k))


def _max_err(x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor | None) -> float:
    d = unpadded(x - y, keep)
    return float(d.abs().max()) if d.numel() else 0.0


def referee(case: dict[str, Any], got: Sequence[Any], want: Sequence[torch.Tensor], exact: Sequence[torch.Tensor],
            rtol: float, atol: float, inputs: Sequence[Any] = ()) -> dict[str, Any]:
    """``case`` (a failed `compare` of ``got`` with ``want``) judged again against ``exact``.

    Each failed output passes if its distance to ``exact`` is within
    ``atol + max(rtol x scale, REFEREE_FACTOR x PyTorch's fp32 distance)``.
    Then the artifact is within ``(REFEREE_FACTOR + 1) x`` PyTorch's distance of
    the fp32 reference (triangle inequality); the returned case is the
    comparison at that bound, which it records as ``rtol`` with the float64
    distances under ``float64``.
    """
    keep = padding_mask(inputs)
    widened, notes = rtol, []
    for o in case["outputs"]:
        if o["ok"] or "scale" not in o:
            continue  # a shape or integer mismatch is not rounding
        i = o["index"]
        g = torch.as_tensor(got[i]).double().reshape(want[i].shape)
        w, x = want[i].double(), exact[i].double().reshape(want[i].shape)
        artifact_err, pytorch_err = _max_err(g, x, keep), _max_err(w, x, keep)
        scale = o["scale"]
        notes.append({"index": i, "artifact_err": artifact_err, "pytorch_err": pytorch_err})
        if artifact_err > atol + max(rtol * scale, REFEREE_FACTOR * pytorch_err):
            return {**case, "float64": notes}
        if scale:
            widened = max(widened, (REFEREE_FACTOR + 1.0) * pytorch_err / scale)
    out = compare(got, want, case["inputs"], widened, atol, inputs=inputs)
    out["rtol"], out["float64"] = widened, notes
    return out

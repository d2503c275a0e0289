"""Hidden-state targets for distillation: taps on a program's intermediate tensors.

Matching only the final output gives a deep sparse student one signal that must
travel back through every pruned layer. Matching the hidden states as well
(the residual stream after each normalisation, as TinyBERT and the layer-wise
distillation of sparse BERTs do) gives every block its own target, and the
student converges in far fewer steps.

`HiddenTaps` rewrites a copy of ``program.module()`` so that every forward call
also records chosen intermediate tensors (the graph's values are unchanged:
the tap returns nothing that is used). Points:

- ``norm``: the outputs of every LayerNorm / RMSNorm / GroupNorm op (the residual
  stream of a transformer block, the output of a normalised conv stage);
- ``linear``: the outputs of every linear layer (models whose norms are written
  out as elementwise ops, such as a hand-written RMSNorm);
- ``auto``: ``norm`` when the graph has at least two norm ops, else ``linear``.

`hidden_loss` compares student and teacher taps by relative mean squared error
(each tap divided by the teacher's mean square, so wide and narrow layers weigh
the same), averaged over taps, at the real tokens only when given the batch's
padding mask (`sparsecc.recovery.outputs.token_mask`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from sparsecc.core.recording import record_values
from sparsecc.errors import UsageError
from sparsecc.recovery.outputs import real_tokens

__all__ = ["HIDDEN_POINTS", "HiddenTaps", "hidden_loss"]

HIDDEN_POINTS = ("auto", "norm", "linear")

_aten = torch.ops.aten
_NORM_OPS = {_aten.layer_norm.default, _aten.group_norm.default, _aten.rms_norm.default,
             _aten.native_layer_norm.default, _aten.native_group_norm.default}
_LINEAR_OPS = {_aten.linear.default, _aten.addmm.default}


def _tap_nodes(module: torch.fx.GraphModule, points: str) -> tuple[str, list[torch.fx.Node]]:
    if points not in HIDDEN_POINTS:
        raise UsageError(f"hidden-state points must be one of {', '.join(HIDDEN_POINTS)}, got {points!r}")
    calls = [n for n in module.graph.nodes if n.op == "call_function"]
    norms = [n for n in calls if n.target in _NORM_OPS]
    if points == "auto":
        points = "norm" if len(norms) >= 2 else "linear"
    nodes = norms if points == "norm" else [n for n in calls if n.target in _LINEAR_OPS]
    return points, nodes


class HiddenTaps:
    """Records the tensors at ``points`` on every forward call of ``module`` (rewritten in place).

    ``module`` must be a ``torch.fx.GraphModule`` (what ``ExportedProgram.module()``
    returns). After a call, ``values`` holds the tapped tensors in graph order,
    with their autograd history; `clear` empties it.
    """

    def __init__(self, module: torch.nn.Module, points: str = "auto") -> None:
        if not isinstance(module, torch.fx.GraphModule):
            raise UsageError(f"hidden-state distillation needs a captured program, got {type(module).__name__}")
        self.points, nodes = _tap_nodes(module, points)
        if not nodes:
            raise UsageError(f"hidden-state distillation: the program has no {self.points} op to match "
                             f"(points={points!r}); use points 'linear' or turn hidden states off")
        self.names = [n.name for n in nodes]
        self.values: list[torch.Tensor] = []
        record_values(module, nodes, self._record)

    def _record(self, index: int, value: object) -> None:
        # native_layer_norm and friends return (out, mean, rstd): the output is the first
        self.values.append(value[0] if isinstance(value, (tuple, list)) else value)  # type: ignore[arg-type]

    def clear(self) -> None:
        self.values = []

    def __len__(self) -> int:
        return len(self.names)


def hidden_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over taps of ``mean((s - t)^2) / mean(t^2)`` (relative MSE), over the positions ``mask``
    keeps in taps shaped ``[batch, tokens, ...]``."""
    if len(student) != len(teacher):
        raise UsageError(f"hidden-state distillation: the student records {len(student)} hidden states, "
                         f"the teacher {len(teacher)}; their graphs differ")
    if not student:
        raise UsageError("hidden-state distillation: no hidden state was recorded")
    total = torch.zeros(())
    for i, (s, t) in enumerate(zip(student, teacher)):
        if s.shape != t.shape:
            raise UsageError(f"hidden-state distillation: tap {i} is {list(s.shape)} in the student, "
                             f"{list(t.shape)} in the teacher")
        s, t = real_tokens(s, mask), real_tokens(t, mask)
        total = total + (s - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-12)
    return total / len(student)

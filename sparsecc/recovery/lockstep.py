"""Running a sparse program and its dense teacher in lockstep: the dense weights as overrides.

`reconstruct` and `block-tune` run the sparse program twice on the same
batches, node by node (`sparsecc.plan.graph_runner.GraphRunner`): once as it
is and once with the teacher's dense weights put back in its placeholders
(and its masks set to ones), so every activation has a dense twin.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch.export import ExportedProgram

from sparsecc.core.ir import get_node_info
from sparsecc.core.program import placeholders_by_target, state_tensor
from sparsecc.recovery.base import RecoveryError

__all__ = ["dense_state", "dense_overrides", "mask_applications"]


def dense_state(teacher: Any) -> Mapping[str, torch.Tensor]:
    """The teacher's weights by state-dict name (an ExportedProgram's or an nn.Module's)."""
    if isinstance(teacher, ExportedProgram):
        return teacher.state_dict
    if isinstance(teacher, torch.nn.Module):
        return dict(teacher.named_parameters())
    raise RecoveryError(f"the teacher must be the dense model (an ExportedProgram or nn.Module) as teacher, "
                        f"got {type(teacher).__name__}")


def dense_overrides(program: ExportedProgram, masks: Mapping[str, torch.Tensor],
                    dense: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights and mask constants that turn the sparse program back into the dense one: every sparse
    weight, and every other parameter the teacher has in the same shape (an earlier stage may have
    trained a norm or a bias; the dense twin must see the teacher's)."""
    params = set(program.graph_signature.parameters)
    out: dict[str, torch.Tensor] = {}
    for target, node in placeholders_by_target(program).items():
        info = get_node_info(node)
        fqn = info.spec.fqn if info is not None and info.spec is not None else (target if target in params else None)
        if fqn is None or fqn not in dense:
            continue
        if tuple(dense[fqn].shape) == tuple(state_tensor(program, target).shape):
            out[target] = dense[fqn].detach()
            if info is not None and info.mask is not None:
                out[info.mask] = torch.ones_like(state_tensor(program, info.mask))
    return out


def mask_applications(nodes: list[torch.fx.Node]) -> dict[str, list[torch.fx.Node]]:
    """The ``W * mask`` nodes of an unfolded program, by weight: the masked value the layers read."""
    applied: dict[str, list[torch.fx.Node]] = {}
    for n in nodes:
        info = get_node_info(n) if n.op == "call_function" else None
        if info is not None and info.apply_mask_of:
            applied.setdefault(info.apply_mask_of, []).append(n)
    return applied

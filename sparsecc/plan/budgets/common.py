"""What the allocation methods share: the layers being re-allocated, their weights and scores, the loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.export import ExportedProgram

from sparsecc.core.analyze import PrunableWeight, as_matrix
from sparsecc.core.ir import MaskSpec, get_node_info
from sparsecc.core.program import placeholders_by_target, state_tensor
from sparsecc.plan.criteria import CriterionContext, get_criterion
from sparsecc.plan.criteria import needs_calibration as criterion_needs

from .options import BudgetError

__all__ = ["LossFn", "Progress", "Layer", "units_of", "block_of", "groups_of", "weight_reader", "layer_scores",
           "unit_scores", "loss_fn"]

LossFn = Callable[..., float]
Progress = Callable[[int, int, str], None]


@dataclass
class Layer:
    """One re-allocated weight: its spec, shape facts, and the group (block) that shares a sparsity."""

    spec: MaskSpec
    weight: PrunableWeight
    units: int
    unit: int  # params per unit
    group: str


def block_of(fqn: str) -> str:
    """The numbered module a weight belongs to (``model.layers.3``), or its layer name.

    OWL and ECoFLaP allocate per transformer block; blocks are found from the
    names, up to the first all-digit component.
    """
    parts = fqn.split(".")
    for i, p in enumerate(parts[:-1]):
        if p.isdigit() and i > 0:
            return ".".join(parts[: i + 1])
    return fqn.rsplit(".", 1)[0] if fqn.endswith(".weight") else fqn


def units_of(spec: MaskSpec, w: PrunableWeight) -> tuple[int, int]:
    p = spec.pattern
    if p.kind == "block":
        r, c = p.block  # type: ignore[misc]
        return w.numel // (r * c), r * c
    if p.kind == "channel":
        return w.out_size, w.numel // w.out_size
    return w.numel, 1


def groups_of(layers: list[Layer]) -> tuple[list[str], np.ndarray]:
    """The group names in order of first appearance, and each layer's group index."""
    names: list[str] = []
    index: dict[str, int] = {}
    of = np.empty(len(layers), dtype=np.int64)
    for i, ly in enumerate(layers):
        if ly.group not in index:
            index[ly.group] = len(names)
            names.append(ly.group)
        of[i] = index[ly.group]
    return names, of


def weight_reader(program: ExportedProgram | None, method: str) -> Callable[[str], torch.Tensor]:
    """``fqn -> weight`` as the program computes with it (masked, if a mask is in place)."""
    if program is None:
        raise BudgetError(f"budget {method!r} reads the weights: pass program=")
    nodes = placeholders_by_target(program)

    def read(fqn: str) -> torch.Tensor:
        w = state_tensor(program, fqn).detach()
        info = get_node_info(nodes[fqn])
        if info is not None and info.mask is not None:
            w = w * state_tensor(program, info.mask)
        return w

    return read


def layer_scores(ly: Layer, weight: torch.Tensor, criterion: str, stats: dict | None, method: str) -> torch.Tensor:
    layer_stats = (stats or {}).get(ly.spec.fqn, {})
    if criterion_needs(criterion) and not layer_stats:
        raise BudgetError(
            f"budget {method!r} scores with {criterion!r}, which needs calibration statistics, "
            f"and there are none for {ly.spec.fqn}: pass stats= (see sparsecc.calibrate)"
        )
    ctx = CriterionContext(ly.spec.fqn, ly.weight.output_axis, ly.weight.reduction_axis, layer_stats)
    return get_criterion(criterion)(weight, ctx).detach().float()


def unit_scores(ly: Layer, scores: torch.Tensor) -> torch.Tensor:
    """One score per unit: the entry itself, or the RMS of a block's / channel's entries."""
    p = ly.spec.pattern
    if p.kind == "unstructured":
        return scores.reshape(-1)
    mat = as_matrix(scores, ly.weight.output_axis, ly.weight.reduction_axis)
    mat = mat.reshape(mat.shape[0], -1).square()
    if p.kind == "channel":
        return mat.mean(1).sqrt()
    r, c = p.block  # type: ignore[misc]
    rows, cols = mat.shape
    return mat.reshape(rows // r, r, cols // c, c).mean((1, 3)).sqrt().reshape(-1)


def loss_fn(loss: LossFn | None, method: str) -> LossFn:
    if loss is not None:
        return loss
    try:
        from sparsecc.plan.calibrate import objective_loss  # type: ignore[attr-defined]
    except ImportError as e:
        raise BudgetError(f"budget {method!r} needs sparsecc.calibrate.objective_loss: {e}") from None
    return objective_loss

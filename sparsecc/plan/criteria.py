"""Importance criteria: which weights to keep, from the weights and (optionally) calibration data.

Two kinds:

- a **score** criterion maps ``(weight, context)`` to a score per entry
  (higher keeps); patterns turn scores into masks
  (`sparsecc.masks.compute_mask`), so it works with every pattern;
- a **solver** criterion (SparseGPT) chooses the mask and also returns new
  values for the surviving weights.

Each criterion declares the calibration statistics it needs (see
`sparsecc.calibrate`): ``act_sq`` (activation norms), ``hessian``
(``X Xᵀ``), ``taylor`` (gradients). Magnitude and random need none.

| criterion | score | needs |
|---|---|---|
| magnitude | ``|W|`` | - |
| random | uniform noise, seeded by the weight's name | - |
| wanda | ``|W| · ||X_j||₂``, compared within each output row | act_sq |
| sparsegpt | OBS saliency, with weight repair | hessian |
| taylor | ``|W · dL/dW|`` (RMS over batches) | taylor |
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from sparsecc.core.ir import SparsityPattern
from sparsecc.plan.masks import compute_mask, from_rows_view, pruned_units, rows_view, spread_counts
from sparsecc.plan.sparsegpt import sparsegpt_prune

__all__ = [
    "CriterionContext",
    "Criterion",
    "CriterionInfo",
    "CRITERIA",
    "register_criterion",
    "get_criterion",
    "criterion_info",
    "needs_calibration",
    "choose_mask",
]


@dataclass
class CriterionContext:
    """What a criterion may know about the weight besides its values."""

    fqn: str
    output_axis: int
    reduction_axis: int
    stats: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


Criterion = Callable[[torch.Tensor, CriterionContext], torch.Tensor]


@dataclass(frozen=True)
class CriterionInfo:
    name: str
    fn: Callable[..., Any]
    needs: frozenset[str] = frozenset()
    kind: Literal["score", "solver"] = "score"
    row_wise: bool = False  # unstructured masks compare scores within each output row


_INFO: dict[str, CriterionInfo] = {}
# name -> score function (the registry recipes validate against)
CRITERIA: dict[str, Callable[..., Any]] = {}


def register_criterion(
    name: str, *, needs: tuple[str, ...] = (), kind: str = "score", row_wise: bool = False
) -> Callable[[Callable], Callable]:
    def deco(fn: Callable) -> Callable:
        _INFO[name] = CriterionInfo(name, fn, frozenset(needs), kind, row_wise)  # type: ignore[arg-type]
        CRITERIA[name] = fn
        return fn

    return deco


def criterion_info(name: str) -> CriterionInfo:
    try:
        return _INFO[name]
    except KeyError:
        raise KeyError(f"unknown criterion {name!r}; known: {', '.join(sorted(_INFO))}") from None


def get_criterion(name: str) -> Callable[..., Any]:
    return criterion_info(name).fn


def needs_calibration(name: str) -> frozenset[str]:
    """The calibration statistics criterion ``name`` needs (empty: none)."""
    return criterion_info(name).needs


def _stat(ctx: CriterionContext, key: str, criterion: str) -> Any:
    value = ctx.stats.get(key)
    if value is None:
        raise ValueError(
            f"{ctx.fqn}: criterion {criterion!r} needs calibration statistics ({key}); "
            "pass calibration data (sparsify(..., calibration=CalibrationData(...)) or a recipe "
            "`calibration:` section on the command line)"
        )
    return value


@register_criterion("magnitude")
def magnitude(weight: torch.Tensor, ctx: CriterionContext) -> torch.Tensor:
    return weight.detach().abs()


@register_criterion("random")
def random(weight: torch.Tensor, ctx: CriterionContext) -> torch.Tensor:
    # Seeded by the weight's name so the same recipe gives the same masks.
    gen = torch.Generator().manual_seed(zlib.crc32(ctx.fqn.encode()))
    return torch.rand(weight.shape, generator=gen)


@register_criterion("wanda", needs=("act_sq",), row_wise=True)
def wanda(weight: torch.Tensor, ctx: CriterionContext) -> torch.Tensor:
    """Sun et al., "A Simple and Effective Pruning Approach for Large Language Models" (2023)."""
    norm = _stat(ctx, "act_sq", "wanda").float().clamp_min(0).sqrt()
    mat = rows_view(weight.detach().float().abs(), ctx.output_axis, ctx.reduction_axis)
    if norm.dim() == 2:  # grouped conv: rows of group g read that group's inputs
        groups = norm.shape[0]
        norm = norm.repeat_interleave(mat.shape[0] // groups, dim=0)
    else:
        norm = norm[None, :]
    if norm.shape[-1] != mat.shape[1]:
        raise ValueError(f"{ctx.fqn}: activation statistics have {norm.shape[-1]} columns, weight has {mat.shape[1]}")
    return from_rows_view(mat * norm, tuple(weight.shape), ctx.output_axis, ctx.reduction_axis)


@register_criterion("taylor", needs=("taylor",))
def taylor(weight: torch.Tensor, ctx: CriterionContext) -> torch.Tensor:
    scores = _stat(ctx, "taylor", "taylor")
    if tuple(scores.shape) != tuple(weight.shape):
        raise ValueError(f"{ctx.fqn}: Taylor scores {tuple(scores.shape)} do not match weight {tuple(weight.shape)}")
    return scores


@register_criterion("sparsegpt", needs=("hessian",), kind="solver")
def sparsegpt(weight: torch.Tensor, ctx: CriterionContext, pattern: SparsityPattern,
              sparsity: float) -> tuple[torch.Tensor, torch.Tensor]:
    hessian = _stat(ctx, "hessian", "sparsegpt")
    mat = rows_view(weight.detach(), ctx.output_axis, ctx.reduction_axis)
    opts = {k: ctx.options[k] for k in ("blocksize", "damp") if k in ctx.options}
    if hessian.dim() == 3:  # grouped conv: one problem per group
        groups = hessian.shape[0]
        per = mat.shape[0] // groups
        # Per-group shares that add up to exactly the layer's pruned count.
        size = per * mat.shape[1]
        shares = spread_counts(pruned_units(mat.numel(), sparsity), [size] * groups)
        parts = [sparsegpt_prune(mat[g * per:(g + 1) * per], hessian[g], pattern, shares[g] / size, **opts)
                 for g in range(groups)]
        new, keep = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    else:
        new, keep = sparsegpt_prune(mat, hessian, pattern, sparsity, **opts)
    shape = tuple(weight.shape)
    return (from_rows_view(new, shape, ctx.output_axis, ctx.reduction_axis),
            from_rows_view(keep, shape, ctx.output_axis, ctx.reduction_axis))


def choose_mask(
    weight: torch.Tensor,
    criterion: str,
    pattern: SparsityPattern,
    sparsity: float,
    ctx: CriterionContext,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The keep-mask for one weight, and its new values when the criterion repairs weights."""
    info = criterion_info(criterion)
    if info.kind == "solver":
        new, keep = info.fn(weight, ctx, pattern, sparsity)
        return keep, new.to(weight.dtype)
    scores = info.fn(weight, ctx)
    mask = compute_mask(scores, pattern, sparsity, ctx.output_axis, ctx.reduction_axis, row_wise=info.row_wise)
    return mask, None

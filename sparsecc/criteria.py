"""Importance criteria: a score per weight entry, higher means keep.

A criterion is a function ``(weight, context) -> scores`` of the weight's
shape. Patterns turn scores into masks (`sparsecc.masks.compute_mask`), so
every criterion works with every pattern. Calibrated criteria (which need
activations) read what they need from ``context``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["CriterionContext", "Criterion", "CRITERIA", "register_criterion", "get_criterion"]


@dataclass
class CriterionContext:
    """What a criterion may know about the weight besides its values."""

    fqn: str
    output_axis: int
    reduction_axis: int
    stats: dict[str, Any] = field(default_factory=dict)


Criterion = Callable[[torch.Tensor, CriterionContext], torch.Tensor]
CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str) -> Callable[[Criterion], Criterion]:
    def deco(fn: Criterion) -> Criterion:
        CRITERIA[name] = fn
        return fn

    return deco


def get_criterion(name: str) -> Criterion:
    try:
        return CRITERIA[name]
    except KeyError:
        raise KeyError(f"unknown criterion {name!r}; known: {', '.join(sorted(CRITERIA))}") from None


@register_criterion("magnitude")
def magnitude(weight: torch.Tensor, ctx: CriterionContext) -> torch.Tensor:
    return weight.detach().abs()


@register_criterion("random")
def random(weight: torch.Tensor, ctx: CriterionContext) -> torch.Tensor:
    # Seeded by the weight's name so the same recipe gives the same masks.
    gen = torch.Generator().manual_seed(zlib.crc32(ctx.fqn.encode()))
    return torch.rand(weight.shape, generator=gen)

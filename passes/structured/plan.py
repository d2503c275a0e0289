"""Choosing what to remove: importance per group and the kept indices of each group.

Importance is aggregated over every coupled slice of a unit (all weights
that produce or consume it), so a channel that one layer needs keeps it for
all of them:

| criterion | score of a unit |
|---|---|
| ``l1`` / ``l2`` | sum of ``|w|`` / ``w²`` over the unit's slices of every weight in the group |
| ``bn_scale`` | sum of ``|γ|`` of the BatchNorm / GroupNorm scales in the group (network slimming); groups without a norm fall back to ``l2`` |
| ``taylor`` | sum of ``|w · dL/dw|`` over the unit's slices (gradients from calibration data, `taylor_gradients`) |
| ``bn_energy`` | the share of its consumers' normalised output variance the unit carries, predicted from the BatchNorm before them (no data, `bn_prior`); groups without that prediction fall back to ``l2`` |
| ``random`` | seeded noise |

Ratios are per group (``scope="layer"``: every group loses the same
fraction) or global (``scope="global"``: units are ranked across groups after
normalising each group's scores by its mean; ``bn_energy`` scores are
already comparable across layers and are ranked as they are). Kept counts of channel groups
can be rounded up to multiples of 8/16/32 for fast kernels.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np
import torch
from torch.export import ExportedProgram

from sparsecc.core.program import state_tensor

from .bn_prior import BnPrior
from .dependency import DependencyAnalysis, DependencyGroup, UnitKind, axis_keep, find_dependency_groups

__all__ = [
    "Criterion",
    "CRITERIA",
    "StructuredPlan",
    "group_importance",
    "plan_structured_pruning",
    "taylor_gradients",
    "axis_keep",
]

Criterion = Literal["l1", "l2", "bn_scale", "bn_energy", "taylor", "random"]
CRITERIA: tuple[str, ...] = ("l1", "l2", "bn_scale", "bn_energy", "taylor", "random")


@dataclass
class StructuredPlan:
    """Per prunable group, the indices it keeps (groups not listed keep everything)."""

    analysis: DependencyAnalysis
    kept: dict[int, np.ndarray] = field(default_factory=dict)  # group id -> sorted kept indices
    skipped: dict[int, str] = field(default_factory=dict)  # group id -> why it was left whole
    criterion: str = "l2"
    fallback: dict[int, str] = field(default_factory=dict)  # group id -> the criterion used instead, and why

    def kept_by_atom(self) -> dict[int, np.ndarray]:
        return {self.analysis.groups[g].atom: k for g, k in self.kept.items()}

    def narrowed_inputs(self) -> dict[str, tuple[int, np.ndarray]]:
        """Per parameter that loses channels on an input (``in``) axis: that axis and its keep mask."""
        kept = self.kept_by_atom()
        out: dict[str, tuple[int, np.ndarray]] = {}
        for gid in self.kept:
            for m in self.analysis.groups[gid].members:
                if m.role != "in" or m.kind != "parameter" or m.target in out:
                    continue
                keep = axis_keep(self.analysis, m.target, m.axis, kept)
                if keep is not None and not keep.all():
                    out[m.target] = (m.axis, keep)
        return out

    def kept_along(self, target: str, axis: int) -> np.ndarray | None:
        """The keep mask over one axis of a lifted tensor (None when that axis loses nothing)."""
        return axis_keep(self.analysis, target, axis, self.kept_by_atom())

    @property
    def removed_units(self) -> int:
        return sum(self.analysis.groups[g].size - len(k) for g, k in self.kept.items())

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for g in self.analysis.groups:
            row = g.to_dict()
            row.pop("members")
            row["members"] = len(g.members)
            if g.id in self.fallback:
                row["criterion"] = self.fallback[g.id]
            if g.id in self.kept:
                row["kept"] = int(len(self.kept[g.id]))
            else:
                row["kept"] = g.size
                if g.id in self.skipped:
                    row["reasons"] = row["reasons"] + [self.skipped[g.id]]
            rows.append(row)
        return {"criterion": self.criterion, "groups": rows}

    def table(self) -> str:
        """A plain-text table: one line per group, pruned or why not."""
        lines = [f"{'group':>5}  {'kind':8} {'kept':>11}  name / reason"]
        for g in self.analysis.groups:
            if g.id in self.kept:
                state = f"{len(self.kept[g.id]):5d}/{g.size:<5d}"
                why = ""
            else:
                state = f"{g.size:5d}/{g.size:<5d}"
                why = "  -- " + "; ".join((g.reasons or [self.skipped.get(g.id, "")])[:2])
            lines.append(f"{g.id:>5}  {g.kind:8} {state}  {g.name}{why}")
        return "\n".join(lines)


def _unit_scores(values: torch.Tensor, axis: int, coords: np.ndarray, size: int, power: int) -> np.ndarray:
    per_index = values.detach().float().abs().pow(power)
    per_index = per_index.movedim(axis, 0).reshape(per_index.shape[axis], -1).sum(1).numpy()
    valid = coords >= 0
    out = np.zeros(size)
    np.add.at(out, coords[valid], per_index[valid])
    return out


def group_importance(
    program: ExportedProgram,
    analysis: DependencyAnalysis,
    group: DependencyGroup,
    criterion: str = "l2",
    *,
    gradients: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """One score per unit of ``group`` (higher keeps).

    ``bn_energy`` returns ``l2`` scores for a group none of whose consumers
    reads a BatchNorm-predicted activation; `plan_structured_pruning` records that.
    """
    if criterion == "random":
        rng = np.random.default_rng(seed * 1_000_003 + zlib.crc32(group.name.encode()))
        return rng.random(group.size)
    members = [m for m in group.members if m.kind == "parameter"]
    if criterion == "bn_energy":
        energy = BnPrior(program).scores(analysis, group)
        if energy is not None:
            return energy
        criterion = "l2"
    if criterion == "bn_scale":
        norms = [m for m in members if m.role == "norm"]
        if norms:
            members, criterion = norms, "l1"
        else:
            criterion = "l2"
    if criterion == "taylor":
        if gradients is None:
            raise ValueError("criterion 'taylor' needs gradients: pass taylor_gradients(program, batches)")
        score = np.zeros(group.size)
        for m in members:
            if m.target not in gradients:
                continue
            w = state_tensor(program, m.target)
            co = analysis.member_coords(m.target, m.axis)[group.atom]
            score += _unit_scores(w.detach() * gradients[m.target], m.axis, co, group.size, 1)
        return score
    if criterion not in ("l1", "l2"):
        raise ValueError(f"unknown structured criterion {criterion!r}; use one of {', '.join(CRITERIA)}")
    power = 1 if criterion == "l1" else 2
    score = np.zeros(group.size)
    weights = [m for m in members if m.role in ("out", "in", "norm")] or members
    for m in weights:
        w = state_tensor(program, m.target)
        co = analysis.member_coords(m.target, m.axis)[group.atom]
        score += _unit_scores(w, m.axis, co, group.size, power)
    return score


def taylor_gradients(
    program: ExportedProgram,
    batches: Iterable[tuple[tuple[Any, ...], dict[str, Any]]],
    loss_fn: Callable[[Any], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Accumulated ``|dL/dw|``-weighted gradients of every parameter over calibration batches.

    ``loss_fn(outputs)`` defaults to half the mean squared output (a label-free
    proxy: how much each weight moves the model's outputs).
    """
    module = copy.deepcopy(program.module())  # program.module() shares the program's parameters
    params = dict(module.named_parameters())
    for p in params.values():
        p.requires_grad_(True)
    acc = {k: torch.zeros_like(p) for k, p in params.items()}
    for args, kwargs in batches:
        module.zero_grad(set_to_none=True)
        out = module(*args, **kwargs)
        leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]
        loss = loss_fn(out) if loss_fn else sum(0.5 * t.pow(2).mean() for t in leaves)
        loss.backward()
        for k, p in params.items():
            if p.grad is not None:
                acc[k] += p.grad.detach().abs()
    return acc


def _matches(group: DependencyGroup, patterns: Sequence[str]) -> str | None:
    """The first pattern that names a weight of ``group``; ``out:`` / ``in:`` before a pattern
    match only weights whose output / input axis the group slices."""
    for full in patterns:
        role, pat = (full.split(":", 1)) if full.startswith(("out:", "in:")) else (None, full)
        for m in group.members:
            if m.role not in ("out", "in") or (role is not None and m.role != role):
                continue
            layer = m.target.rsplit(".", 1)[0]
            if pat.startswith("re:"):
                if re.search(pat[3:], m.target) or re.search(pat[3:], layer):
                    return full
            elif fnmatch.fnmatchcase(m.target, pat) or fnmatchcase_layer(layer, pat):
                return full
    return None


def fnmatchcase_layer(layer: str, pat: str) -> bool:
    return fnmatch.fnmatchcase(layer, pat)


def _round_up(k: int, multiple: int, size: int) -> int:
    if multiple <= 1:
        return k
    return min(size, int(math.ceil(k / multiple)) * multiple)


def plan_structured_pruning(
    program: ExportedProgram,
    ratio: float,
    *,
    analysis: DependencyAnalysis | None = None,
    criterion: str = "l2",
    scope: Literal["layer", "global"] = "layer",
    units: Sequence[UnitKind] = ("channel", "head"),
    round_to: int = 1,
    include: Sequence[str] = (),
    protect: Sequence[str] = (),
    overrides: dict[str, float] | None = None,
    gradients: dict[str, torch.Tensor] | None = None,
    max_group_ratio: float = 0.9,
    seed: int = 0,
) -> StructuredPlan:
    """Choose the kept indices of every prunable group.

    ``ratio`` is the fraction of units removed (per group, or overall with
    ``scope="global"``, where no group loses more than ``max_group_ratio``).
    ``include`` (globs or ``re:`` patterns on weight FQNs or layer names)
    restricts pruning to groups touching a matching weight (``out:PATTERN``:
    groups that slice the output channels of a matching weight, ``in:PATTERN``
    its input channels); ``protect`` keeps
    groups touching a matching weight whole; ``overrides`` maps a pattern to
    its own ratio (first match wins). ``units`` picks the unit kinds to prune:
    ``channel`` (conv channels, FFN neurons), ``head`` (attention heads, GQA
    groups, conv groups), ``strided`` (the same index in every head or conv group).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"structured ratio must be in [0, 1), got {ratio}")
    for k in units:
        if k not in ("channel", "head", "strided"):
            raise ValueError(f"unknown unit kind {k!r}; use channel, head or strided")
    analysis = analysis or find_dependency_groups(program)
    plan = StructuredPlan(analysis, criterion=criterion)
    chosen = _chosen_groups(analysis, plan, ratio, units, include, protect, overrides)
    scores: dict[int, np.ndarray] = {}
    comparable: dict[int, bool] = {}  # bn_energy scores rank across groups as they are
    prior = BnPrior(program) if criterion == "bn_energy" else None  # one lookup cache for every group
    for g, _ in chosen:
        energy = prior.scores(analysis, g) if prior is not None else None
        comparable[g.id] = energy is not None
        if energy is not None:
            scores[g.id] = energy
            continue
        if prior is not None:
            plan.fallback[g.id] = "l2 (no consumer reads a BatchNorm-predicted activation)"
        scores[g.id] = group_importance(program, analysis, g, "l2" if prior is not None else criterion,
                                        gradients=gradients, seed=seed)
    keep_counts: dict[int, int] = {}
    if scope == "layer":
        for g, r in chosen:
            keep_counts[g.id] = max(1, g.size - int(math.floor(r * g.size + 1e-9)))
    elif scope == "global":
        keep_counts = _global_keep_counts(chosen, scores, comparable, ratio, max_group_ratio)
    else:
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    for g, _ in chosen:
        k = keep_counts[g.id]
        if g.kind == "channel":
            k = _round_up(k, round_to, g.size)
        if k >= g.size:
            plan.skipped[g.id] = "nothing to remove after rounding"
            continue
        order = np.argsort(-scores[g.id], kind="stable")
        plan.kept[g.id] = np.sort(order[:k])
    return plan


def _chosen_groups(analysis: DependencyAnalysis, plan: StructuredPlan, ratio: float, units: Sequence[UnitKind],
                   include: Sequence[str], protect: Sequence[str],
                   overrides: dict[str, float] | None) -> list[tuple[DependencyGroup, float]]:
    """The prunable groups selected by ``units``/``include``/``protect``, each with its ratio; the others
    go to ``plan.skipped`` with the reason."""
    chosen: list[tuple[DependencyGroup, float]] = []
    for g in analysis.groups:
        if not g.prunable:
            continue
        if g.kind not in units:
            plan.skipped[g.id] = f"unit kind {g.kind!r} not selected (units: {', '.join(units)})"
            continue
        if include and _matches(g, include) is None:
            plan.skipped[g.id] = "not matched by include"
            continue
        if (pat := _matches(g, protect)) is not None:
            plan.skipped[g.id] = f"protected ({pat})"
            continue
        r = ratio
        for pat, value in (overrides or {}).items():
            if _matches(g, [pat]) is not None:
                r = float(value)
                break
        chosen.append((g, r))
    return chosen


def _global_keep_counts(chosen: list[tuple[DependencyGroup, float]], scores: dict[int, np.ndarray],
                        comparable: dict[int, bool], ratio: float, max_group_ratio: float) -> dict[int, int]:
    """Kept units per group under one ranking of every unit (no group loses more than ``max_group_ratio``)."""
    pool = []
    raw = [scores[gid].mean() for gid, ok in comparable.items() if ok]  # none unless bn_energy
    level = float(np.mean(raw)) if raw else 1.0  # fallback groups: mean-normalised, then on the energy scale
    for g, _ in chosen:
        s = scores[g.id]
        norm = s if comparable[g.id] else level * s / (s.mean() + 1e-12)
        pool.extend((v, g.id) for v in norm)
    pool.sort()
    budget = int(math.floor(ratio * len(pool)))
    removed: dict[int, int] = {g.id: 0 for g, _ in chosen}
    caps = {g.id: min(g.size - 1, int(math.floor(max_group_ratio * g.size))) for g, _ in chosen}
    for _, gid in pool:
        if budget <= 0:
            break
        if removed[gid] < caps[gid]:
            removed[gid] += 1
            budget -= 1
    sizes = {g.id: g.size for g, _ in chosen}
    return {gid: sizes[gid] - n for gid, n in removed.items()}

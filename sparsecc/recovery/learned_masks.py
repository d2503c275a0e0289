"""Learned N:M masks (MaskLLM, Fang et al. 2024): a distribution over each group's candidate masks.

Every N:M weight is cut into groups of M consecutive entries along its
reduction axis, exactly as `sparsecc.plan.masks` defines N:M groups
(``in_features`` of a linear ``[out, in]``, input channels of a conv). A group
has C(M, N) candidate masks (6 for 2:4); the method learns one logit per
candidate and group. Each step draws a soft mask per group with the
Gumbel-softmax trick::

    p = softmax((scale * logits + g) / tau) ,  g ~ Gumbel(0, 1)
    mask = p @ candidates                      # [groups, M], every row sums to N

and trains the logits (and, with ``train_weights``, the weights) so that the
student computing with ``weight * mask`` matches the dense teacher (KL on
logits for language models and classifiers, cosine + relative MSE for
embeddings: `sparsecc.recovery.outputs`). ``tau`` falls and ``scale`` rises
over the run (`sparsecc.recovery.schedules`), so the draws harden towards one
candidate per group. The exported mask is the argmax candidate: a valid N:M
mask by construction, written into the program as a folded weight (or a new
mask constant for an unfolded program) with the weight's `MaskSpec` kept, so
`VerifySparsityPass` and every backend take it as any other sparse program.

Weights (``weights_from``): ``mixed`` (default) keeps the one-shot program's
values where its mask keeps them (SparseGPT's compensating updates) and takes
the dense teacher's elsewhere (a learned mask may keep an entry the one-shot
mask pruned, so it needs the dense value); ``teacher`` takes every value from
the dense teacher, as MaskLLM does. The one-shot mask the
student carries (SparseGPT, Wanda, magnitude) is the **prior**: its
candidate's logit starts at ``prior_strength`` (the others at 0), so a strong
prior starts at, and stays near, the one-shot mask. Logits saved by one run
(``save_logits``) start another (``init_logits``): MaskLLM's transfer of masks
learned on one data set to another.

Options (``RecoveryOptions.extra``):

- ``mask_lr`` (0.05): Adam learning rate of the logits;
- ``prior_strength`` (3.0): logit of the one-shot candidate at the start;
- ``tau`` ([2.0, 0.05]) and ``scale`` ([1.0, 20.0]): start and end of the
  temperature (geometric) and logit-scale (linear) schedules;
- ``train_weights`` (False): also train the kept weights (at ``options.lr``)
  with ``weight_reg`` (1e-2) times their relative squared distance to the
  dense weights;
- ``init_logits`` / ``save_logits``: a ``.pt`` file to start from / write to.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import torch
from torch.export import ExportedProgram
from torch.func import functional_call

from sparsecc.core.analyze import find_prunable_weights
from sparsecc.core.ir import get_node_info, set_node_info
from sparsecc.core.program import ProgramEditor
from sparsecc.errors import UsageError
from sparsecc.plan.masks import from_rows_view, rows_view
from sparsecc.recovery.base import (
    RecoveryError,
    RecoveryOptions,
    RecoveryResult,
    TrainingLoop,
    assert_zeros_kept,
    batch_tokens,
    batch_unit,
    masks_of,
    register_method,
    save_checkpoint,
    load_checkpoint,
    trainable_copy,
    checked_batches,
)
from sparsecc.recovery.outputs import batch_loss, output_loss, teacher_outputs
from sparsecc.recovery.schedules import interpolate

__all__ = [
    "candidate_masks",
    "to_groups",
    "from_groups",
    "prior_logits",
    "sample_masks",
    "argmax_masks",
    "NMWeight",
    "nm_weights",
    "dense_weights",
    "write_masks",
    "save_logits",
    "load_logits",
    "learn_masks",
]


def candidate_masks(n: int, m: int) -> torch.Tensor:
    """The C(m, n) masks of one group, ``[C(m, n), m]`` float (1 = kept), in lexicographic order."""
    if not 0 < n < m:
        raise UsageError(f"N:M needs 0 < N < M, got {n}:{m}")
    rows = []
    for kept in itertools.combinations(range(m), n):
        row = [0.0] * m
        for k in kept:
            row[k] = 1.0
        rows.append(row)
    return torch.tensor(rows)


def to_groups(t: torch.Tensor, output_axis: int, reduction_axis: int, m: int) -> torch.Tensor:
    """``t`` as ``[groups, m]``: m consecutive entries of the reduction axis per row (the N:M groups)."""
    return rows_view(t, output_axis, reduction_axis).reshape(-1, m)


def from_groups(groups: torch.Tensor, shape: tuple[int, ...], output_axis: int, reduction_axis: int) -> torch.Tensor:
    """Inverse of `to_groups`."""
    return from_rows_view(groups.reshape(shape[output_axis], -1), shape, output_axis, reduction_axis)


def prior_logits(prior: torch.Tensor, candidates: torch.Tensor, strength: float) -> torch.Tensor:
    """Logits ``[groups, C]``: ``strength`` on the candidate equal to each group's ``prior`` mask, else 0.

    A prior group that matches no candidate (fewer than N kept: the weight had exact
    zeros) gets the candidate that keeps the most of it.
    """
    overlap = prior.float() @ candidates.T  # kept entries shared with each candidate
    best = overlap.argmax(1)
    logits = torch.zeros(prior.shape[0], candidates.shape[0])
    logits[torch.arange(prior.shape[0]), best] = float(strength)
    return logits


def sample_masks(logits: torch.Tensor, candidates: torch.Tensor, tau: float, scale: float = 1.0, *,
                 hard: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Gumbel-softmax draw per group: ``[groups, M]``, each row a convex mix of candidates (sums to N).

    ``hard`` returns the drawn candidate itself (0/1) with the soft draw's gradient
    (straight-through).
    """
    if tau <= 0:
        raise UsageError(f"the Gumbel temperature must be positive, got {tau}")
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype).clamp_(1e-10, 1.0 - 1e-7)
    gumbel = -torch.log(-torch.log(u))
    probs = torch.softmax((scale * logits + gumbel) / tau, dim=-1)
    if hard:
        one_hot = torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)
        probs = one_hot + (probs - probs.detach())  # exactly 0/1 forward values
    return probs @ candidates.to(probs.dtype)


def argmax_masks(logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """The most likely candidate of every group, ``[groups, M]`` bool: the mask a run exports."""
    return candidates[logits.argmax(-1)].to(torch.bool)


class NMWeight:
    """One N:M weight being learned: its layout, its candidates, and the dense values."""

    def __init__(self, fqn: str, n: int, m: int, output_axis: int, reduction_axis: int,
                 dense: torch.Tensor, prior: torch.Tensor) -> None:
        self.fqn, self.n, self.m = fqn, n, m
        self.output_axis, self.reduction_axis = output_axis, reduction_axis
        self.shape = tuple(dense.shape)
        self.candidates = candidate_masks(n, m)
        self.dense = dense.detach().clone()
        self.prior = prior.to(torch.bool)

    def groups(self, t: torch.Tensor) -> torch.Tensor:
        return to_groups(t, self.output_axis, self.reduction_axis, self.m)

    def ungroup(self, g: torch.Tensor) -> torch.Tensor:
        return from_groups(g, self.shape, self.output_axis, self.reduction_axis)


def nm_weights(program: ExportedProgram, dense: Mapping[str, torch.Tensor]) -> list[NMWeight]:
    """Every weight of ``program`` whose `MaskSpec` is N:M, with its current mask as the prior."""
    layout = find_prunable_weights(program).by_fqn()
    masks = masks_of(program)
    out = []
    for node in program.graph.nodes:
        info = get_node_info(node) if node.op == "placeholder" else None
        if info is None or info.spec is None or info.spec.pattern.kind != "nm":
            continue
        fqn, pattern = info.spec.fqn, info.spec.pattern
        w = layout.get(fqn)
        if w is None:
            raise RecoveryError(f"learned-mask: {fqn} has an N:M spec but is no longer a prunable weight")
        out.append(NMWeight(fqn, pattern.n, pattern.m, w.output_axis, w.reduction_axis, dense[fqn], masks[fqn]))
    return out


def dense_weights(teacher: Any, program: ExportedProgram, fqns: list[str]) -> tuple[dict[str, torch.Tensor], str]:
    """The dense values of ``fqns``: the teacher's where it has them (same name and shape), else the student's.

    Returns the weights and where they came from (``teacher`` / ``student`` / ``mixed``).
    """
    if isinstance(teacher, ExportedProgram):
        source = dict(teacher.state_dict)
    elif isinstance(teacher, torch.nn.Module):
        source = dict(teacher.named_parameters())
    else:
        source = {}
    out, origins = {}, set()
    for fqn in fqns:
        mine = program.state_dict[fqn]
        theirs = source.get(fqn)
        if theirs is not None and tuple(theirs.shape) == tuple(mine.shape):
            out[fqn], origin = theirs.detach().clone().float(), "teacher"
        else:
            out[fqn], origin = mine.detach().clone().float(), "student"
        origins.add(origin)
    return out, (origins.pop() if len(origins) == 1 else "mixed" if origins else "none")


def write_masks(program: ExportedProgram, weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                criterion: str) -> ExportedProgram:
    """``program`` with each weight set to ``weights[fqn] * masks[fqn]`` (and its mask constant, when
    unfolded, set to the mask); the `MaskSpec` keeps its pattern and records ``criterion``."""
    editor = ProgramEditor(program)
    for node in list(editor.placeholders()):
        info = get_node_info(node)
        if info is None or info.spec is None or info.spec.fqn not in masks:
            continue
        fqn = info.spec.fqn
        mask = masks[fqn].to(torch.bool)
        old = editor.tensor(fqn)
        editor.set_tensor(fqn, (weights[fqn].detach() * mask).to(old.dtype))
        if info.mask is not None:
            editor.set_tensor(info.mask, mask.to(editor.tensor(info.mask).dtype))
        achieved = float((~mask).float().mean())
        set_node_info(node, spec=replace(info.spec, criterion=criterion, achieved=achieved))
    return editor.finish()


def save_logits(path: str | Path, logits: Mapping[str, torch.Tensor], specs: Mapping[str, tuple[int, int]]) -> None:
    """Write learned logits (and each weight's N:M) atomically, for `load_logits` in a later run."""
    save_checkpoint(path, {"kind": "sparsecc-learned-mask-logits", "version": 1,
                           "logits": {k: v.detach().clone() for k, v in logits.items()},
                           "nm": {k: list(v) for k, v in specs.items()}})


def load_logits(path: str | Path) -> dict[str, torch.Tensor]:
    """The logits `save_logits` wrote, by weight FQN."""
    payload = load_checkpoint(path)
    if payload is None:
        raise UsageError(f"learned-mask: no logits file at {path}")
    if payload.get("kind") != "sparsecc-learned-mask-logits":
        raise UsageError(f"learned-mask: {path} is not a logits file written by save_logits")
    return dict(payload["logits"])


class _MaskedStudent(torch.nn.Module):
    """The student module plus one logits parameter per N:M weight (saved together in checkpoints)."""

    def __init__(self, student: torch.nn.Module, weights: list[NMWeight], init: dict[str, torch.Tensor],
                 train_weights: bool) -> None:
        super().__init__()
        self.student = student
        self.logits = torch.nn.ParameterList([torch.nn.Parameter(init[w.fqn].clone()) for w in weights])
        # the dense weights: trained with train_weights, else constants
        self.base = torch.nn.ParameterList([torch.nn.Parameter(w.dense.clone(), requires_grad=train_weights)
                                            for w in weights])
        self.weights = weights

    def masked(self, tau: float, scale: float) -> dict[str, torch.Tensor]:
        out = {}
        for w, logits, base in zip(self.weights, self.logits, self.base):
            soft = sample_masks(logits, w.candidates, tau, scale)
            out[w.fqn] = base * w.ungroup(soft)
        return out

    def exported(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        weights, masks = {}, {}
        for w, logits, base in zip(self.weights, self.logits, self.base):
            masks[w.fqn] = w.ungroup(argmax_masks(logits.detach(), w.candidates))
            weights[w.fqn] = base.detach().clone()
        return weights, masks


def _initial_logits(weights: list[NMWeight], extra: Mapping[str, Any],
                    strength: float) -> tuple[dict[str, torch.Tensor], str]:
    init = {w.fqn: prior_logits(w.groups(w.prior), w.candidates, strength) for w in weights}
    source = "prior"
    if extra.get("init_logits"):
        loaded = load_logits(extra["init_logits"])
        for fqn, logits in loaded.items():
            if fqn in init:
                if tuple(logits.shape) != tuple(init[fqn].shape):
                    raise UsageError(f"learned-mask: logits for {fqn} in {extra['init_logits']} have shape "
                                     f"{tuple(logits.shape)}, this weight needs {tuple(init[fqn].shape)}")
                init[fqn] = logits.float().clone()
        source = f"{extra['init_logits']} ({len(set(loaded) & set(init))}/{len(init)} weights)"
    return init, source


def _pair(extra: Mapping[str, Any], key: str, default: tuple[float, float]) -> tuple[float, float]:
    v = extra.get(key, default)
    if isinstance(v, (int, float)):
        return float(v), float(v)
    if len(v) != 2 or min(float(x) for x in v) <= 0:
        raise UsageError(f"learned-mask option {key!r} must be a positive number or [start, end], got {v!r}")
    return float(v[0]), float(v[1])


def mask_settings(options: RecoveryOptions) -> dict[str, Any]:
    """The checked ``options:`` values of a learned-mask stage (UsageError names a wrong one)."""
    extra = options.extra
    cfg = {"weights_from": str(extra.get("weights_from", "mixed")), "tau": _pair(extra, "tau", (2.0, 0.05)),
           "scale": _pair(extra, "scale", (1.0, 20.0)), "mask_lr": options.number("mask_lr", 0.05),
           "weight_reg": options.number("weight_reg", 1e-2), "train_weights": bool(extra.get("train_weights", False)),
           "prior_strength": options.number("prior_strength", 3.0)}
    if cfg["weights_from"] not in ("mixed", "teacher"):
        raise UsageError(f"learned-mask option 'weights_from' must be mixed or teacher, got {cfg['weights_from']!r}")
    if cfg["mask_lr"] <= 0 or cfg["weight_reg"] < 0:
        raise UsageError(f"learned-mask options 'mask_lr' must be > 0 and 'weight_reg' >= 0, got {cfg['mask_lr']} "
                         f"and {cfg['weight_reg']}")
    return cfg


@register_method("learned-mask", options=("mask_lr", "prior_strength", "tau", "scale", "train_weights", "weight_reg",
                                         "weights_from", "init_logits", "save_logits"), settings=mask_settings)
def learn_masks(program, teacher, batches, options, progress=None):
    """Learn the N:M masks of ``program`` by distillation against ``teacher`` (see the module docstring)."""
    t0 = time.perf_counter()
    batches, extra, cfg = checked_batches(batches, teacher, "learned-mask"), dict(options.extra), mask_settings(options)
    fqns = [i.spec.fqn for n in program.graph.nodes if n.op == "placeholder"
            for i in [get_node_info(n)] if i is not None and i.spec is not None and i.spec.pattern.kind == "nm"]
    if not fqns:
        raise RecoveryError("learned-mask: the program has no N:M weight (sparsify with an N:M pattern first)")
    dense, origin = dense_weights(teacher, program, fqns)
    if cfg["weights_from"] == "mixed":
        # kept entries keep the one-shot values (SparseGPT's updates); pruned ones get the dense values back
        masks = masks_of(program)
        dense = {f: torch.where(masks[f], program.state_dict[f].detach().float(), w) for f, w in dense.items()}
        origin = f"one-shot kept, {origin} pruned"
    weights = nm_weights(program, dense)
    init, init_source = _initial_logits(weights, extra, cfg["prior_strength"])
    targets = teacher_outputs(teacher, batches)
    loss_before = output_loss(program, targets, batches, options)

    train_weights = cfg["train_weights"]
    student = trainable_copy(program)
    for p in student.parameters():
        p.requires_grad_(False)  # only logits (and the N:M weights, with train_weights) train
    model = _MaskedStudent(student, weights, init, train_weights)
    groups = [{"params": list(model.logits), "lr": cfg["mask_lr"]}]
    if train_weights:
        groups.append({"params": list(model.base), "lr": options.lr})
    opt = torch.optim.Adam(groups)
    tau, scale, reg = cfg["tau"], cfg["scale"], cfg["weight_reg"]
    norms = [w.dense.pow(2).mean().clamp_min(1e-12) for w in weights]

    def step(i: int, b: int) -> tuple[float, int]:
        t = interpolate(*tau, i, max(options.steps - 1, 1), "exp")
        s = interpolate(*scale, i, max(options.steps - 1, 1), "linear")
        args, kwargs = batches[b]
        out = functional_call(model.student, model.masked(t, s), args, kwargs)
        loss = batch_loss(out, targets[b], options, kwargs)
        if train_weights and reg > 0:
            loss = loss + reg * sum((p - w.dense).pow(2).mean() / n for p, w, n in zip(model.base, weights, norms))
        if not torch.isfinite(loss):
            raise RecoveryError(f"learned-mask: the loss is {float(loss)} at step {i + 1}; lower mask_lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach()), batch_tokens(batches[b])

    loop = TrainingLoop(options, model, opt, len(batches), name="learned-mask", progress=progress,
                        unit=batch_unit(batches[0]))
    history = loop.run(step)
    final_w, final_masks = model.exported()
    result = write_masks(program, final_w, final_masks, "learned-mask")
    assert_zeros_kept(result, final_masks)
    if extra.get("save_logits"):
        save_logits(extra["save_logits"], {w.fqn: lg for w, lg in zip(weights, model.logits)},
                    {w.fqn: (w.n, w.m) for w in weights})
    changed = sum(int((final_masks[w.fqn] != w.prior).sum()) for w in weights)
    total = sum(math.prod(w.shape) for w in weights)
    loss_after = output_loss(result, targets, batches, options)
    return RecoveryResult(result, "learned-mask", loop.step, loss_before, loss_after, time.perf_counter() - t0,
                          loop.tokens, history, {
                              "resumed_from": loop.resumed_from, "train_seconds": round(loop.seconds, 3),
                              "nm_weights": len(weights), "weights_from": origin, "init": init_source,
                              "train_weights": train_weights, "changed_fraction": changed / max(total, 1),
                              "saved_logits": extra.get("save_logits")})

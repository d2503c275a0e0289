"""Sparse training from dense: SR-STE, progressive gradient flow, gradual sparsity.

The dense weights (the teacher's, by name; `sparsecc.recovery.learned_masks.dense_weights`)
train while every forward pass uses them pruned to each weight's own pattern
(its `MaskSpec`: N:M, unstructured, block or channel), with the mask recomputed
from the weights' magnitudes every ``mask_every`` steps (`sparsecc.plan.masks.compute_mask`):

- **SR-STE** (Zhou et al. 2021, "Learning N:M fine-grained structured sparse
  neural networks from scratch"): the straight-through estimator passes the
  gradient of the pruned weight to every dense entry, and the sparse-refined
  term ``lambda_w * (1 - mask) * W`` added to the gradient decays the pruned
  entries, so masks settle instead of flipping back and forth;
- **progressive gradient flow** (``variant: pgf``; Bambhaniya et al. 2024):
  the gradient reaching pruned entries is multiplied by a factor decaying
  from ``flow[0]`` to ``flow[1]`` over the run (cosine), so early steps explore
  masks and late ones refine the weights the final mask keeps;
- **gradual sparsity** (`sparsecc.recovery.schedules.sparsity_at`): for
  unstructured, block and channel targets the sparsity rises from ``initial``
  (0: dense) to the spec's target over the first ``ramp`` fraction of the run
  (``schedule``: cubic, linear); N:M keeps its N:M from the first step.

At the end the weights are projected once more onto the target pattern at
the full target sparsity and written into the program (folded, plus the mask
constant when unfolded) with the `MaskSpec` kept: masked weights are exactly
zero and `VerifySparsityPass` accepts the program.

Options (``RecoveryOptions.extra``): ``variant`` (``sr-ste`` | ``pgf`` |
``ste``), ``lambda_w`` (2e-4), ``flow`` ([1.0, 0.0]), ``schedule`` (``cubic``),
``ramp`` (0.75), ``initial`` (0.0), ``mask_every`` (1), ``weight_decay`` (0).
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import torch
from torch.func import functional_call

from sparsecc.core.analyze import find_prunable_weights
from sparsecc.core.ir import MaskSpec, get_node_info
from sparsecc.errors import UsageError
from sparsecc.plan.masks import compute_mask
from sparsecc.recovery.base import (
    RecoveryError,
    RecoveryOptions,
    RecoveryResult,
    TrainingLoop,
    assert_zeros_kept,
    batch_tokens,
    batch_unit,
    register_method,
    trainable_copy,
    checked_batches,
)
from sparsecc.recovery.learned_masks import dense_weights, write_masks
from sparsecc.recovery.outputs import batch_loss, output_loss, teacher_outputs
from sparsecc.recovery.schedules import KINDS, interpolate, sparsity_at

__all__ = ["VARIANTS", "ste_weight", "SparseTarget", "sparse_targets", "sr_ste"]

VARIANTS = ("sr-ste", "pgf", "ste")


def ste_weight(weight: torch.Tensor, mask: torch.Tensor, flow: float = 1.0) -> torch.Tensor:
    """``weight * mask`` in the forward pass; in the backward pass kept entries get the full gradient
    and pruned entries ``flow`` times it (1: the straight-through estimator, 0: plain masking)."""
    kept = weight * mask
    pruned = weight * (~mask) * flow
    return kept + pruned - pruned.detach()


class SparseTarget:
    """One weight trained towards its spec: layout, pattern, target sparsity."""

    def __init__(self, spec: MaskSpec, output_axis: int, reduction_axis: int) -> None:
        self.spec, self.output_axis, self.reduction_axis = spec, output_axis, reduction_axis

    @property
    def fqn(self) -> str:
        return self.spec.fqn

    def mask(self, weight: torch.Tensor, sparsity: float | None = None) -> torch.Tensor:
        """Magnitude mask of ``weight`` under the spec's pattern at ``sparsity`` (default: the target)."""
        s = self.spec.target if sparsity is None else sparsity
        if self.spec.pattern.kind != "nm" and s <= 0:
            return torch.ones_like(weight, dtype=torch.bool)
        return compute_mask(weight.detach().abs(), self.spec.pattern, s, self.output_axis, self.reduction_axis)


def sparse_targets(program: Any) -> list[SparseTarget]:
    """A `SparseTarget` for every weight of ``program`` that has a `MaskSpec`."""
    layout = find_prunable_weights(program).by_fqn()
    out = []
    for node in program.graph.nodes:
        info = get_node_info(node) if node.op == "placeholder" else None
        if info is None or info.spec is None:
            continue
        w = layout.get(info.spec.fqn)
        if w is None:
            raise RecoveryError(f"sr-ste: {info.spec.fqn} has a MaskSpec but is no longer a prunable weight")
        out.append(SparseTarget(info.spec, w.output_axis, w.reduction_axis))
    return out


def _settings(options: RecoveryOptions) -> dict[str, Any]:
    """The checked ``options:`` values of an sr-ste stage (UsageError names a wrong one)."""
    extra = options.extra
    variant = str(extra.get("variant", "sr-ste"))
    if variant not in VARIANTS:
        raise UsageError(f"sr-ste option 'variant' must be one of {', '.join(VARIANTS)}, got {variant!r}")
    flow = extra.get("flow", (1.0, 0.0))
    if isinstance(flow, (int, float)):
        flow = (float(flow), float(flow))
    if isinstance(flow, str) or len(flow) != 2 or not all(isinstance(f, (int, float)) for f in flow):
        raise UsageError(f"sr-ste option 'flow' must be a number or [start, end], got {flow!r}")
    ramp = options.number("ramp", 0.75)
    if not 0.0 <= ramp <= 1.0:
        raise UsageError(f"sr-ste option 'ramp' must lie in [0, 1], got {ramp}")
    if str(extra.get("schedule", "cubic")) not in KINDS:
        raise UsageError(f"sr-ste option 'schedule' must be one of {', '.join(KINDS)}, got {extra['schedule']!r}")
    every = extra.get("mask_every", 1)
    if not isinstance(every, int) or every < 1:
        raise UsageError(f"sr-ste option 'mask_every' must be a positive integer, got {every!r}")
    return {"variant": variant, "lambda_w": options.number("lambda_w", 2e-4),
            "flow": (float(flow[0]), float(flow[1])), "schedule": str(extra.get("schedule", "cubic")),
            "ramp": ramp, "initial": options.number("initial", 0.0), "mask_every": every,
            "weight_decay": options.number("weight_decay", 0.0)}


class _DenseStudent(torch.nn.Module):
    """The student module plus the dense weights being trained (checkpointed together)."""

    def __init__(self, student: torch.nn.Module, dense: Mapping[str, torch.Tensor], fqns: list[str]) -> None:
        super().__init__()
        self.student = student
        self.fqns = fqns
        self.dense = torch.nn.ParameterList([torch.nn.Parameter(dense[f].clone()) for f in fqns])


@register_method("sr-ste", options=("variant", "lambda_w", "flow", "schedule", "ramp", "initial", "mask_every",
                                   "weight_decay"), settings=_settings)
def sr_ste(program, teacher, batches, options, progress=None):
    """Train the sparse ``program``'s weights from dense towards ``teacher`` (see the module docstring)."""
    t0 = time.perf_counter()
    batches, cfg = checked_batches(batches, teacher, "sr-ste"), _settings(options)
    targets_ = sparse_targets(program)
    if not targets_:
        raise RecoveryError("sr-ste: the program has no weight with a MaskSpec (sparsify it first)")
    fqns = [t.fqn for t in targets_]
    dense, origin = dense_weights(teacher, program, fqns)
    outputs = teacher_outputs(teacher, batches)
    loss_before = output_loss(program, outputs, batches, options)
    student = trainable_copy(program)
    model = _DenseStudent(student, dense, fqns)
    opt = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=cfg["weight_decay"])
    steps = max(options.steps, 1)
    ramp_end = int(round(cfg["ramp"] * steps))
    masks: dict[str, torch.Tensor] = {}

    def current_masks(i: int) -> dict[str, torch.Tensor]:
        if not masks or i % cfg["mask_every"] == 0:
            for t, p in zip(targets_, model.dense):
                s = None if t.spec.pattern.kind == "nm" else sparsity_at(
                    i, t.spec.target, end=ramp_end, initial=cfg["initial"], kind=cfg["schedule"])
                masks[t.fqn] = t.mask(p, s)
        return masks

    def step(i: int, b: int) -> tuple[float, int]:
        ms = current_masks(i)
        if cfg["variant"] == "pgf":
            flow = interpolate(*cfg["flow"], i, steps, "cosine")
        else:
            flow = 1.0
        weights = {f: ste_weight(p, ms[f], flow) for f, p in zip(fqns, model.dense)}
        args, kwargs = batches[b]
        loss = batch_loss(functional_call(model.student, weights, args, kwargs), outputs[b], options, kwargs)
        if not torch.isfinite(loss):
            raise RecoveryError(f"sr-ste: the loss is {float(loss)} at step {i + 1}; lower lr ({options.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["variant"] in ("sr-ste", "pgf") and cfg["lambda_w"] > 0:
            with torch.no_grad():  # sparse-refined decay of the pruned entries
                for f, p in zip(fqns, model.dense):
                    p.grad.add_(p * ~ms[f], alpha=cfg["lambda_w"])
        opt.step()
        return float(loss.detach()), batch_tokens(batches[b])

    loop = TrainingLoop(options, model, opt, len(batches), name="sr-ste", progress=progress,
                        unit=batch_unit(batches[0]), state=lambda: {"masks": dict(masks)},
                        load_state=lambda d: masks.update(d["masks"]))
    history = loop.run(step)
    final_w = {f: p.detach().clone() for f, p in zip(fqns, model.dense)}
    final_masks = {t.fqn: t.mask(final_w[t.fqn]) for t in targets_}  # the projection onto the full target
    result = write_masks(program, final_w, final_masks, f"{cfg['variant']}")
    assert_zeros_kept(result, final_masks)
    loss_after = output_loss(result, outputs, batches, options)
    return RecoveryResult(result, "sr-ste", loop.step, loss_before, loss_after, time.perf_counter() - t0,
                          loop.tokens, history, {
                              "resumed_from": loop.resumed_from, "train_seconds": round(loop.seconds, 3),
                              "variant": cfg["variant"], "weights_from": origin, "sparse_weights": len(fqns),
                              "schedule": cfg["schedule"], "ramp_steps": ramp_end})

"""The calibration loss (`objective_loss`) and first-order Taylor scores from its gradients (`gradient_stats`)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch.export import ExportedProgram

from sparsecc.core.analyze import find_prunable_weights
from sparsecc.plan.activation_stats import weights_for
from sparsecc.plan.calibration_data import CalibrationData, CalibrationError, Progress
from sparsecc.plan.graph_runner import GraphRunner

__all__ = ["objective_loss", "gradient_stats"]


def _logits(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping) and "logits" in outputs:
        return outputs["logits"]
    if hasattr(outputs, "logits"):
        return outputs.logits
    leaves = [x for x in pytree.tree_leaves(outputs) if isinstance(x, torch.Tensor) and x.is_floating_point()]
    if not leaves:
        raise CalibrationError("the program returns no floating-point tensor to compute a loss on")
    return leaves[0]


def _input_ids(args: tuple, kwargs: dict) -> torch.Tensor | None:
    ids = kwargs.get("input_ids")
    if ids is None and args and isinstance(args[0], torch.Tensor) and not args[0].is_floating_point():
        ids = args[0]
    return ids


def _loss(objective: Any, outputs: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    if callable(objective):
        return objective(outputs, args, kwargs)
    logits = _logits(outputs)
    ids = _input_ids(args, kwargs)
    looks_lm = (ids is not None and logits.dim() == 3 and logits.shape[:2] == ids.shape
                and logits.shape[-1] > int(ids.max()))  # a vocabulary axis, not hidden states
    if objective == "lm" or (objective == "auto" and looks_lm):
        if ids is None or logits.dim() != 3:
            raise CalibrationError("objective 'lm' needs input_ids and [batch, seq, vocab] logits")
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
    if objective == "self_ce" or (objective == "auto" and logits.dim() == 2 and logits.shape[-1] > 1):
        return F.cross_entropy(logits.float(), logits.detach().argmax(-1))
    return 0.5 * logits.float().square().mean()


def objective_loss(
    program: ExportedProgram,
    data: CalibrationData,
    overrides: Mapping[str, torch.Tensor] | None = None,
    max_batches: int | None = None,
) -> float:
    """Mean calibration loss of ``program``, with some parameters replaced by ``overrides``."""
    runner = GraphRunner(program)
    overrides = dict(overrides or {})
    unknown = [f for f in overrides if f not in runner.param_node]
    if unknown:
        raise CalibrationError(f"not parameters of this program: {', '.join(unknown)}")
    batches = data.batches[:max_batches] if max_batches else data.batches
    total = 0.0
    with torch.no_grad():
        for args, kwargs in batches:
            flat = runner.run(runner.initial_env((args, kwargs), overrides), 0, len(runner.nodes))
            outputs = pytree.tree_unflatten(list(flat), program.call_spec.out_spec)
            total += float(_loss(data.objective, outputs, args, kwargs))
    return total / len(batches)


def gradient_stats(
    program: ExportedProgram,
    data: CalibrationData,
    fqns: Iterable[str] | None = None,
    *,
    progress: Progress | None = None,
) -> dict[str, dict[str, Any]]:
    """First-order Taylor scores: the RMS over batches of ``W * dL/dW`` (Molchanov et al., 2019)."""
    weights = weights_for(program, fqns) if fqns is not None else find_prunable_weights(program).weights
    wanted = [w.fqn for w in weights]
    module = program.module()
    params = dict(module.named_parameters())
    missing = [f for f in wanted if f not in params]
    if missing:
        raise CalibrationError(f"cannot take gradients of {', '.join(missing)}: not parameters of the module")
    for p in module.parameters():
        p.requires_grad_(False)
    for f in wanted:
        params[f].requires_grad_(True)
    acc = {f: torch.zeros_like(params[f], dtype=torch.float32) for f in wanted}
    for i, (args, kwargs) in enumerate(data.batches):
        if progress:
            progress(i, len(data), "gradient batch")
        for f in wanted:
            params[f].grad = None
        loss = _loss(data.objective, module(*args, **kwargs), args, kwargs)
        if not loss.requires_grad:
            raise CalibrationError("the calibration loss does not depend on the weights to score")
        loss.backward()
        for f in wanted:
            g = params[f].grad
            if g is not None:
                acc[f].add_((params[f].detach().float() * g.float()).square())
    if progress:
        progress(len(data), len(data), "")
    n = len(data)
    return {f: {"rows": n, "taylor": (acc[f] / n).sqrt()} for f in wanted}

"""Allocating activation sparsity across layers: greedy on the measured output error.

A uniform target treats every linear input alike, but they are not: in a Llama
block the MLP's gate/up input (the normalised residual stream) carries the
information every later layer needs, while the down projection's input (the
gated intermediate) is mostly small values. `allocate_sparsity` raises the
sparsity of one group of layers (layers of one kind across the blocks, e.g.
every ``mlp.down_proj``) at a time by ``step``, each time picking the group
whose increase costs the least output error per weight skipped, until the
weight-weighted sparsity reaches the target (TEAL's greedy allocation, on
groups instead of single layers so that it needs tens of forward passes, not
thousands). The error is the relative squared error of the program's first
output against the dense output on the calibration batches.

Weights count because the activation-sparse kernel skips the weight columns of
zero inputs: what a layer saves is its sparsity times its weight size.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch.export import ExportedProgram

from sparsecc.core.recording import linear_inputs
from sparsecc.errors import UsageError
from sparsecc.plan.activation_sparsity import LayerActivations

__all__ = ["allocate_sparsity", "layer_groups", "weighted_sparsity"]


def layer_groups(stats: Sequence[LayerActivations], module: torch.fx.GraphModule) -> dict[str, list[str]]:
    """Layers of one kind across the blocks (block numbers replaced by ``*``); layers reading one input together.

    ``module``: the program's module (``ExportedProgram.module()``).
    """
    by_input: dict[torch.fx.Node, list[str]] = {}
    chosen = {s.fqn for s in stats}
    for fqn, _, inp in linear_inputs(module):
        if fqn in chosen:
            by_input.setdefault(inp, []).append(fqn)
    groups: dict[str, list[str]] = {}
    for fqns in by_input.values():  # q, k and v share one input and so one sparsity
        key = "+".join(sorted({re.sub(r"\.\d+\.", ".*.", f) for f in fqns}))
        groups.setdefault(key, []).extend(fqns)
    return groups


def weighted_sparsity(sparsity: Mapping[str, float], sizes: Mapping[str, int]) -> float:
    """Sparsity weighted by weight size: the share of the layers' weight reads that zero inputs skip."""
    total = sum(sizes.values())
    return sum(sparsity.get(f, 0.0) * n for f, n in sizes.items()) / total if total else 0.0


def allocate_sparsity(program: ExportedProgram, stats: Sequence[LayerActivations], target: float,
                      batches: Iterable[tuple[tuple, dict]], *, step: float = 0.05, max_sparsity: float = 0.9,
                      progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """Per-layer activation sparsities whose weight-weighted mean reaches ``target`` (see the module docstring).

    ``stats`` are the chosen layers' input statistics (`measure_activations`,
    `select_layers`); the result feeds `thresholds_for`.
    """
    if not 0.0 < target <= max_sparsity:
        raise UsageError(f"activation sparsity target must lie in (0, {max_sparsity}], got {target}")
    if not 0.0 < step <= 0.5:
        raise UsageError(f"allocation step must lie in (0, 0.5], got {step}")
    batches = list(batches)
    if not batches:
        raise UsageError("allocating activation sparsity needs at least one calibration batch")
    by_fqn = {s.fqn: s for s in stats}
    sizes = {f: int(program.state_dict[f].numel()) for f in by_fqn}
    module, thresholds = _thresholded_module(program, by_fqn)
    groups = layer_groups(stats, module)

    def outputs() -> list[torch.Tensor]:
        with torch.no_grad():
            return [_first_tensor(module(*a, **k)).float() for a, k in batches]

    dense = outputs()
    scale = sum(float(y.square().sum()) for y in dense)

    def error() -> float:
        return sum(float((y - d).square().sum()) for y, d in zip(outputs(), dense)) / scale

    def set_group(key: str, s: float) -> None:
        for f in groups[key]:
            thresholds[f] = by_fqn[f].threshold(s)

    level = {k: 0.0 for k in groups}
    sparsity = {f: 0.0 for f in by_fqn}
    current = 0.0
    while weighted_sparsity(sparsity, sizes) < target - 1e-9:
        best = None
        for key in groups:
            s = round(min(level[key] + step, max_sparsity), 6)
            if s <= level[key]:
                continue
            set_group(key, s)
            gain = (s - level[key]) * sum(sizes[f] for f in groups[key])
            cost = (error() - current) / gain
            set_group(key, level[key])
            if best is None or cost < best[0]:
                best = (cost, key, s)
        if best is None:
            raise UsageError(f"activation sparsity {target:.0%} is out of reach with every layer at "
                             f"{max_sparsity:.0%} (reached {weighted_sparsity(sparsity, sizes):.1%})")
        _, key, s = best
        level[key] = s
        set_group(key, s)
        sparsity.update({f: s for f in groups[key]})
        current = error()
        if progress is not None:
            progress(f"{key} -> {s:.0%}: weighted sparsity {weighted_sparsity(sparsity, sizes):.1%}, "
                     f"output error {current:.2e}")
    return sparsity


def _thresholded_module(program: ExportedProgram, layers: Mapping[str, LayerActivations]
                        ) -> tuple[torch.fx.GraphModule, dict[str, float]]:
    """A copy of the program's module whose chosen linear inputs pass ``where(|x| > t, x, 0)`` with mutable ``t``."""
    module = program.module()
    thresholds = {f: 0.0 for f in layers}

    def threshold(fqn: str, x: torch.Tensor) -> torch.Tensor:
        t = thresholds[fqn]
        return torch.where(x.abs() > t, x, 0.0) if t > 0 else x

    graph = module.graph
    kept: dict[torch.fx.Node, torch.fx.Node] = {}  # one threshold per input: q, k and v read one
    for fqn, linear, inp in linear_inputs(module):
        if fqn in thresholds:
            if inp not in kept:
                with graph.inserting_after(inp):
                    kept[inp] = graph.call_function(threshold, (fqn, inp))
            linear.replace_input_with(inp, kept[inp])
    module.recompile()
    return module, thresholds


def _first_tensor(out: object) -> torch.Tensor:
    while not isinstance(out, torch.Tensor):
        if isinstance(out, Mapping):
            out = next(iter(out.values()))
        elif isinstance(out, (list, tuple)) and out:
            out = out[0]
        else:
            raise UsageError(f"the program's output holds no tensor ({type(out).__name__})")
    return out

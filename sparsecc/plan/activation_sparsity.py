"""Activation sparsity: how many inputs of each linear layer are zero or nearly so, and thresholds.

`measure_activations` runs calibration batches through the program and, for
every linear layer, reads its input (``x`` of ``linear(x, W, b)``): the share
of exact zeros (what ReLU leaves), the share of near zeros (``|x|`` at most
``near_zero`` times the layer's root mean square input), and the quantiles of
``|x|`` from a seeded sample of the values. `thresholds_for` turns those into
per-layer magnitude thresholds for a target sparsity (TEAL's training-free
activation sparsity: inputs with ``|x| <= threshold`` are treated as zero), which
`sparsecc.passes.ActivationSparsityPass` inserts into the graph.

Layers are named by their weight (``model.layers.0.mlp.down_proj.weight``);
layers that read one input (q, k and v) get one threshold from the same values.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch.export import ExportedProgram

from sparsecc.core.recording import linear_inputs, record_values
from sparsecc.errors import UsageError

__all__ = ["LayerActivations", "measure_activations", "thresholds_for", "select_layers"]

_QUANTILES = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 5% .. 95%


@dataclass
class LayerActivations:
    """What one linear layer's input looked like on the calibration data."""

    fqn: str  # the layer's weight
    producer: str  # the op that made the input (gelu, relu, layer_norm, mul, ...)
    in_features: int
    values: int  # input values seen
    zero: float  # share exactly 0
    near_zero: float  # share with |x| <= near_zero * rms
    rms: float
    quantiles: dict[float, float] = field(default_factory=dict)  # share -> |x| at that quantile

    def threshold(self, sparsity: float) -> float:
        """The ``|x|`` below which ``sparsity`` of the inputs fall (0 when exact zeros already reach it)."""
        if not 0.0 <= sparsity < 1.0:
            raise UsageError(f"{self.fqn}: activation sparsity must lie in [0, 1), got {sparsity}")
        if sparsity <= self.zero:
            return 0.0
        return float(_interpolate(self.quantiles, sparsity))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["quantiles"] = {f"{k:.2f}": v for k, v in self.quantiles.items()}
        return d


def _interpolate(quantiles: Mapping[float, float], q: float) -> float:
    keys = sorted(quantiles)
    if q <= keys[0]:
        return quantiles[keys[0]] * q / keys[0]
    for lo, hi in zip(keys, keys[1:]):
        if q <= hi:
            return quantiles[lo] + (quantiles[hi] - quantiles[lo]) * (q - lo) / (hi - lo)
    return quantiles[keys[-1]]


_PASS_THROUGH = ("dropout", "clone", "contiguous", "alias", "detach")


def _producer(node: torch.fx.Node) -> str:
    """The op that made ``node``, looking through identities (dropout in eval, clone)."""
    while node.op == "call_function" and getattr(node.target, "__name__", "").split(".")[0] in _PASS_THROUGH \
            and node.args and isinstance(node.args[0], torch.fx.Node):
        node = node.args[0]
    if node.op != "call_function":
        return node.op
    name = getattr(node.target, "__name__", str(node.target))
    return name.split(".")[0]


def measure_activations(program: ExportedProgram, batches: Iterable[tuple[tuple, dict]], *,
                        near_zero: float = 1e-2, sample: int = 1 << 16, seed: int = 0,
                        progress: Callable[[int, int], None] | None = None) -> list[LayerActivations]:
    """Input statistics of every linear layer of ``program`` over ``batches`` (see the module docstring).

    ``sample``: |x| values kept per layer for the quantiles (drawn uniformly, seeded).
    """
    batches = list(batches)
    if not batches:
        raise UsageError("measuring activations needs at least one calibration batch")
    module = program.module()
    layers = linear_inputs(module)
    if not layers:
        raise UsageError("the program has no linear layer (aten.linear with a weight parameter)")
    per_batch = max(1, sample // len(batches))
    gen = torch.Generator().manual_seed(seed)
    inputs = list(dict.fromkeys(inp for _, _, inp in layers))  # q, k and v read one input: measured once
    counts = [[0, 0, 0, 0.0] for _ in inputs]  # values, zeros, near zeros, sum of squares
    samples: list[list[torch.Tensor]] = [[] for _ in inputs]

    def seen(i: int, x: object) -> None:
        a = x.detach().reshape(-1).abs().float()  # type: ignore[union-attr]
        rms = float(a.square().mean().sqrt())
        c = counts[i]
        c[0] += a.numel()
        c[1] += int((a == 0).sum())
        c[2] += int((a <= near_zero * rms).sum())
        c[3] += float(a.square().sum())
        pick = torch.randint(a.numel(), (min(per_batch, a.numel()),), generator=gen)
        samples[i].append(a[pick])

    record_values(module, inputs, seen)
    with torch.no_grad():
        for k, (args, kwargs) in enumerate(batches):
            module(*args, **kwargs)
            if progress is not None:
                progress(k + 1, len(batches))
    quantiles: dict[int, dict[float, float]] = {}
    for i, vals in enumerate(samples):
        if vals:
            s = torch.cat(vals)
            qs = torch.quantile(s, torch.tensor(_QUANTILES)) if s.numel() > 1 else s.repeat(len(_QUANTILES))
            quantiles[i] = {q: float(v) for q, v in zip(_QUANTILES, qs)}
    result = []
    for fqn, linear, inp in layers:
        i = inputs.index(inp)
        n, zeros, near, sq = counts[i]
        if n == 0:
            continue  # a branch the batches never reached
        in_features = int(program.state_dict[fqn].shape[-1]) if fqn in program.state_dict else 0
        result.append(LayerActivations(fqn, _producer(inp), in_features, n, zeros / n, near / n,
                                       (sq / n) ** 0.5, quantiles[i]))
    return result


def select_layers(stats: Sequence[LayerActivations], layers: Sequence[str] = ("*",),
                  exclude: Sequence[str] | None = None) -> list[LayerActivations]:
    """The layers matching ``layers`` (globs on the weight name) and no ``exclude`` glob.

    ``exclude=None`` leaves out the last linear layer of the graph (a language model's
    head or a classifier: TEAL sparsifies the blocks' projections only).
    """
    chosen = [s for s in stats if any(fnmatch.fnmatchcase(s.fqn, p) for p in layers)]
    if exclude is None:
        chosen = [s for s in chosen if s.fqn != stats[-1].fqn] if len(stats) > 1 else chosen
    else:
        chosen = [s for s in chosen if not any(fnmatch.fnmatchcase(s.fqn, p) for p in exclude)]
    if not chosen:
        raise UsageError(f"no linear layer matches {list(layers)} (layers: {', '.join(s.fqn for s in stats[:4])}...)")
    return chosen


def thresholds_for(stats: Sequence[LayerActivations], sparsity: float | Mapping[str, float]) -> dict[str, float]:
    """Per-layer thresholds: one ``sparsity`` for all, or a mapping from weight name to its sparsity."""
    if isinstance(sparsity, Mapping):
        unknown = sorted(set(sparsity) - {s.fqn for s in stats})
        if unknown:
            raise UsageError(f"activation sparsity given for layers that were not measured: {', '.join(unknown)}")
        return {s.fqn: s.threshold(float(sparsity[s.fqn])) for s in stats if s.fqn in sparsity}
    return {s.fqn: s.threshold(float(sparsity)) for s in stats}

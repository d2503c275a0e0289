"""Calibration: run real inputs through a captured program and collect what criteria need.

Criteria that look at activations (Wanda, SparseGPT) need, per prunable
weight, statistics of the activation that multiplies it. sparsecc collects
them by executing the program's graph node by node (`_GraphRunner`) and
reading each consumer's activation operand as it is computed, so no module
hooks are needed and functional models work the same way.

Statistics are per weight, in the column order of the weight viewed as
``as_matrix(weight, output_axis, reduction_axis).reshape(out, -1)`` (the view
every pattern uses): for a linear ``[out, in]`` the columns are input
features; for a conv ``[Cout, Cin/g, kh, kw]`` they are ``(kh, kw, cin)``.

- ``rows``: activation rows seen (tokens, or output pixels x images for convs);
- ``act_sq``: ``[K]``, sum over rows of ``x_j**2`` (Wanda's ``||X_j||^2``);
- ``hessian``: ``[K, K]``, sum over rows of ``x x^T`` (SparseGPT's ``X X^T``);
- ``taylor``: weight-shaped RMS over batches of ``W * dL/dW``.

Grouped convolutions keep one set per group: ``act_sq`` is ``[groups, K_g]``
and ``hessian`` ``[groups, K_g, K_g]``. Weights that read the same activation
(q, k and v of one attention block) share one statistics object, so each
Hessian is accumulated once.

Sequential calibration (`sequential_solve`) prunes each weight on inputs
produced by the already-pruned weights before it, in a single pass over the
graph: all batches run up to the consumer where a weight's statistics are
complete, the weight is solved there, and the pass continues with the new
value. This is SparseGPT's "true sequential" order (inside a decoder block,
o_proj sees the outputs of pruned q/k/v) at the cost of one forward pass,
where the block-by-block protocol of the SparseGPT and Wanda reference code
runs every block twice (once to collect, once to recompute with the pruned
weights). Memory stays bounded by the live statistics and the activations
alive at the current node.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.fx
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from sparsecc.core.analyze import PrunableWeight, find_prunable_weights, weight_uses
from sparsecc.errors import UsageError

__all__ = [
    "STAT_KINDS",
    "CalibrationError",
    "CalibrationData",
    "calibration_for",
    "collect_stats",
    "sequential_solve",
    "gradient_stats",
    "objective_loss",
    "block_key",
]

STAT_KINDS = ("act_sq", "hessian", "taylor")
Progress = Callable[[int, int, str], None]
Batch = tuple[tuple[Any, ...], dict[str, Any]]

aten = torch.ops.aten


class CalibrationError(UsageError, ValueError):
    pass


@dataclass
class CalibrationData:
    """Calibration batches and the loss that gradient-based criteria and budgets use.

    ``batches`` are ``(args, kwargs)`` pairs, each one call of the model.
    ``objective`` is ``"auto"`` (next-token cross-entropy when the batch has
    ``input_ids`` and the output has a vocabulary axis, else cross-entropy
    against the model's own top-1 prediction for 2-D logits, else half the
    mean squared output), one of ``"lm"``, ``"self_ce"``, ``"output_norm"``,
    or a callable ``(outputs, args, kwargs) -> scalar loss``.
    """

    batches: list[Batch]
    objective: str | Callable[[Any, tuple, dict], torch.Tensor] = "auto"
    # Statistics passes join same-shape batches along axis 0 (taken to be the batch axis)
    # for speed; turn off for a model whose axis 0 is not independent samples.
    join_batches: bool = True

    def __post_init__(self) -> None:
        norm: list[Batch] = []
        for i, b in enumerate(self.batches):
            if isinstance(b, torch.Tensor):
                b = ((b,), {})
            if not (isinstance(b, (tuple, list)) and len(b) == 2 and isinstance(b[0], (tuple, list))
                    and isinstance(b[1], Mapping)):
                raise CalibrationError(f"calibration batch {i} must be (args tuple, kwargs dict) or a tensor, "
                                       f"got {type(b).__name__}")
            norm.append((tuple(b[0]), dict(b[1])))
        if not norm:
            raise CalibrationError("calibration data has no batches")
        if not callable(self.objective) and self.objective not in ("auto", "lm", "self_ce", "output_norm"):
            raise CalibrationError(f"unknown calibration objective {self.objective!r}; "
                                   "known: auto, lm, self_ce, output_norm, or a callable")
        self.batches = norm

    def __len__(self) -> int:
        return len(self.batches)


def calibration_for(spec: Any, samples: int = 64, seq_len: int | None = None) -> CalibrationData:
    """Calibration data for a zoo `ModelSpec`, from `sparsecc.datasets.calibration_inputs`."""
    from sparsecc.data.datasets import calibration_inputs

    return CalibrationData(calibration_inputs(spec, samples, seq_len))


# -- which activation multiplies a weight ----------------------------------------


@dataclass(frozen=True)
class _Tap:
    """How to read the activation of one consumer node as rows x columns."""

    kind: str  # "rows_last" (x[..., K]), "rows_first" (W @ x: x[K, ...]), "conv"
    operand: int  # index of the activation in node.args
    conv: tuple | None = None  # (kernel, stride, padding, dilation, groups)

    def key(self, node: torch.fx.Node) -> tuple:
        act = node.args[self.operand]
        return (getattr(act, "name", str(act)), self.kind, self.conv)


def _conv_params(node: torch.fx.Node, weight_shape: tuple[int, ...]) -> tuple:
    a, kw = node.args, node.kwargs

    def arg(i: int, name: str, default: Any) -> Any:
        return a[i] if len(a) > i else kw.get(name, default)

    spatial = len(weight_shape) - 2
    kernel = tuple(weight_shape[2:])

    def tup(v: Any) -> tuple:
        return tuple(v) if isinstance(v, (list, tuple)) else (v,) * spatial

    if node.target == aten.convolution.default:
        stride, padding, dilation, groups = tup(a[3]), tup(a[4]), tup(a[5]), int(a[8])
    else:
        stride, padding, dilation = tup(arg(3, "stride", 1)), arg(4, "padding", 0), tup(arg(5, "dilation", 1))
        groups = int(arg(6, "groups", 1))
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0,) * spatial
            elif padding == "same":
                padding = tuple(("same", d * (k - 1)) for d, k in zip(dilation, kernel))
            else:
                raise CalibrationError(f"{node.name}: unknown conv padding {padding!r}")
        else:
            padding = tup(padding)
    return kernel, stride, tuple(padding), dilation, groups


def _tap_for(node: torch.fx.Node, weight_operand: torch.fx.Node, role: str, shape: tuple[int, ...]) -> _Tap:
    t, args = node.target, node.args
    if role == "linear":
        return _Tap("rows_last", 0)
    if role == "conv":
        spatial = len(shape) - 2
        if spatial not in (1, 2):
            raise CalibrationError(f"{node.name}: calibration supports 1-D and 2-D convolutions, not {spatial}-D")
        return _Tap("conv", 0, _conv_params(node, shape))
    if role == "matmul":
        a, b = (1, 2) if t == aten.addmm.default else (0, 1)
        if args[b] is weight_operand:
            return _Tap("rows_last", a)
        return _Tap("rows_first", b)
    raise CalibrationError(f"{node.name}: no activation to calibrate for a {role} weight")


def _activation_matrix(x: torch.Tensor, tap: _Tap) -> torch.Tensor:
    """The activation as ``[rows, K]`` (or ``[groups, rows, K_g]`` for grouped convs), float32."""
    x = x.detach().float()
    if tap.kind == "rows_last":
        return x.reshape(-1, x.shape[-1])
    if tap.kind == "rows_first":
        return x.movedim(0, -1).reshape(-1, x.shape[0])
    kernel, stride, padding, dilation, groups = tap.conv  # type: ignore[misc]
    if len(kernel) == 1:  # conv1d as a 2-D conv of height 1
        x = x.unsqueeze(2)
        kernel, stride, dilation = (1, *kernel), (1, *stride), (1, *dilation)
        padding = ((0,) if not isinstance(padding[0], tuple) else (("same", 0),)) + tuple(padding)
    if any(isinstance(p, tuple) for p in padding):  # "same": pad explicitly, asymmetric if odd
        pads: list[int] = []
        for p in reversed(padding):
            total = p[1] if isinstance(p, tuple) else 2 * p
            pads += [total // 2, total - total // 2]
        x = F.pad(x, pads)
        padding = (0,) * len(kernel)
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # [B, C*kh*kw, L]
    b, _, length = cols.shape
    cin = x.shape[1]
    kk = math.prod(kernel)
    cols = cols.reshape(b, groups, cin // groups, kk, length)
    # as_matrix order of a conv weight is (kh, kw, cin): kernel position outer, channel inner.
    cols = cols.permute(1, 0, 4, 3, 2).reshape(groups, b * length, kk * (cin // groups))
    return cols[0] if groups == 1 else cols


class _Stats:
    """Running sums for one activation (shared by the weights that read it).

    The Hessian is symmetric, so for wide activations only its upper blocks
    are accumulated (`_CHUNKS` x `_CHUNKS` column blocks, 10 of 16 products)
    and the lower ones are mirrored when read. With a Hessian, ``act_sq`` is
    its diagonal.
    """

    def __init__(self, needs: frozenset[str]):
        self.needs = needs
        self.rows = 0
        self.act_sq: torch.Tensor | None = None  # kept only without a Hessian
        self.hessian: torch.Tensor | None = None

    def add(self, mat: torch.Tensor) -> None:
        self.rows += mat.shape[-2]
        if "hessian" not in self.needs:
            sq = mat.square().sum(-2)
            self.act_sq = sq if self.act_sq is None else self.act_sq.add_(sq)
            return
        k = mat.shape[-1]
        if self.hessian is None:
            self.hessian = mat.new_zeros(*mat.shape[:-2], k, k)
        if not _chunked(self.hessian):  # grouped convs, narrow activations: one product
            self.hessian.add_(mat.transpose(-1, -2) @ mat)
            return
        edges = _chunk_edges(k)
        for a in range(_CHUNKS):
            rows_a = slice(edges[a], edges[a + 1])
            cols = slice(edges[a], k)  # the diagonal block and everything right of it
            self.hessian[rows_a, cols].addmm_(mat[:, rows_a].t(), mat[:, cols])

    def as_dict(self) -> dict[str, Any]:
        h = self.hessian
        if h is None:
            return {"rows": self.rows, "act_sq": self.act_sq}
        if _chunked(h):  # mirror the upper blocks (idempotent: more batches may follow)
            edges = _chunk_edges(h.shape[-1])
            for a in range(1, _CHUNKS):
                upper = slice(edges[a - 1], edges[a])
                h[edges[a]:, upper] = h[upper, edges[a]:].t()
        return {"rows": self.rows, "act_sq": torch.diagonal(h, dim1=-2, dim2=-1).clone(), "hessian": h}


# Hessians of activations at least this wide are accumulated by upper blocks only.
_CHUNKED_FROM = 256
_CHUNKS = 4


def _chunked(hessian: torch.Tensor) -> bool:
    return hessian.dim() == 2 and hessian.shape[-1] >= _CHUNKED_FROM


def _chunk_edges(k: int) -> list[int]:
    return [round(k * i / _CHUNKS) for i in range(_CHUNKS + 1)]


# -- executing the graph -----------------------------------------------------------


def block_key(node: torch.fx.Node) -> str | None:
    """The numbered block a node belongs to (``model.layers.3``), or its top module, or None."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = str(list(stack.values())[-1][0])
    if not path:
        return None
    parts = path.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[: i + 1])
    return parts[0]


class _GraphRunner:
    """Executes a program's graph on many batches, segment by segment, freeing dead values."""

    def __init__(self, program: ExportedProgram):
        self.program = program
        self.gm = program.graph_module
        self.nodes = [n for n in self.gm.graph.nodes]
        index = {n: i for i, n in enumerate(self.nodes)}
        self.last_use = {n: max((index[u] for u in n.users), default=index[n]) for n in self.nodes}
        self.dead_after: dict[int, list[torch.fx.Node]] = {}
        for n, i in self.last_use.items():
            if n.op != "placeholder":
                self.dead_after.setdefault(i, []).append(n)
        self.placeholders = [n for n in self.nodes if n.op == "placeholder"]
        self.param_node = {
            s.target: s.arg.name for s in program.graph_signature.input_specs
            if s.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)
        }

    def initial_env(self, batch: Batch, overrides: Mapping[str, torch.Tensor]) -> dict[torch.fx.Node, Any]:
        args, kwargs = batch
        try:
            flat = self.program._graph_module_flat_inputs(args, kwargs)
        except Exception as e:
            raise CalibrationError(f"a calibration batch does not fit the program's inputs: {e}") from e
        env = dict(zip(self.placeholders, flat))
        by_name = {n.name: n for n in self.placeholders}
        for fqn, t in overrides.items():
            env[by_name[self.param_node[fqn]]] = t
        return env

    def feed(self, env: dict[torch.fx.Node, Any], i: int,
             taps: Mapping[torch.fx.Node, list[tuple[_Tap, _Stats]]]) -> None:
        """Feed the taps of node ``i`` from ``env`` without running the node."""
        node = self.nodes[i]
        if node in taps:
            args = torch.fx.node.map_arg(node.args, lambda n: env[n])
            for tap, stats in taps[node]:
                stats.add(_activation_matrix(args[tap.operand], tap))

    def run(self, env: dict[torch.fx.Node, Any], start: int, stop: int,
            taps: Mapping[torch.fx.Node, list[tuple[_Tap, _Stats]]] | None = None) -> Any:
        """Run nodes ``[start, stop)`` in ``env`` (updated in place); return the output if reached."""
        result = None
        for i in range(start, stop):
            node = self.nodes[i]
            if node.op == "placeholder":
                continue
            if node.op == "get_attr":
                value: Any = self.gm
                for part in str(node.target).split("."):
                    value = getattr(value, part)
                env[node] = value
            elif node.op == "call_function":
                args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: env[n])
                if taps and node in taps:
                    for tap, stats in taps[node]:
                        stats.add(_activation_matrix(args[tap.operand], tap))
                env[node] = node.target(*args, **kwargs)
            elif node.op == "output":
                result = torch.fx.node.map_arg(node.args[0], lambda n: env[n])
            else:
                raise CalibrationError(f"cannot execute node {node.name} ({node.op})")
            for dead in self.dead_after.get(i, ()):
                env.pop(dead, None)
        return result


def _stacked(program: ExportedProgram, batches: list[Batch], most: int = 8) -> list[Batch]:
    """Consecutive batches of one shape joined along axis 0, up to ``most`` at a time.

    Statistics are sums over rows, so joining changes nothing but speed: a few
    large matrix products instead of many small ones. Batches that differ in
    shape, or a program whose batch axis is static, are left as they are.
    """
    out: list[Batch] = []
    group: list[Batch] = []

    def signature(b: Batch) -> tuple:
        leaves, spec = pytree.tree_flatten(b)
        return (spec, tuple((tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else x for x in leaves))

    def flush() -> None:
        if len(group) > 1:
            leaves = [pytree.tree_flatten(b)[0] for b in group]
            spec = pytree.tree_flatten(group[0])[1]
            joined = [torch.cat(col) if isinstance(col[0], torch.Tensor) and col[0].dim() else col[0]
                      for col in zip(*leaves)]
            candidate = pytree.tree_unflatten(joined, spec)
            try:
                program._graph_module_flat_inputs(*candidate)
                out.append(candidate)
                group.clear()
                return
            except Exception:
                pass  # the program does not take a larger batch: keep them apart
        out.extend(group)
        group.clear()

    for b in batches:
        if group and (len(group) == most or signature(b) != signature(group[0])):
            flush()
        group.append(b)
    flush()
    return out


def _weights_for(program: ExportedProgram, fqns: Iterable[str] | None) -> list[PrunableWeight]:
    analysis = find_prunable_weights(program)
    by_fqn = analysis.by_fqn()
    if fqns is None:
        return [w for w in analysis.weights if w.role != "embedding"]
    out = []
    for f in fqns:
        if f not in by_fqn:
            raise CalibrationError(f"{f!r} is not a prunable weight of this program")
        if by_fqn[f].role == "embedding":
            raise CalibrationError(f"{f}: embedding tables have no activation to calibrate")
        out.append(by_fqn[f])
    return out


def _taps(program: ExportedProgram, weights: Sequence[PrunableWeight], needs: frozenset[str]):
    """Per consumer node, the (tap, stats) pairs to feed; per weight, its stats objects.

    Consumers that read the same activation the same way (q, k and v) share one
    stats object, fed at the earliest of them in graph order: by the time any
    of them runs, the statistics of all are complete.
    """
    by_name = {n.name: n for n in program.graph.nodes}
    order = {n: i for i, n in enumerate(program.graph.nodes)}
    shared: dict[tuple, tuple[_Tap, _Stats, torch.fx.Node]] = {}
    per_weight: dict[str, list[_Stats]] = {}
    for w in weights:
        for use_node, operand in weight_uses(program, by_name[w.node]):
            tap = _tap_for(use_node, operand, w.role, w.shape)
            key = tap.key(use_node)
            if key not in shared:
                shared[key] = (tap, _Stats(needs), use_node)
            elif order[use_node] < order[shared[key][2]]:
                shared[key] = (tap, shared[key][1], use_node)
            per_weight.setdefault(w.fqn, []).append(shared[key][1])
    taps: dict[torch.fx.Node, list[tuple[_Tap, _Stats]]] = {}
    for tap, stats, node in shared.values():
        taps.setdefault(node, []).append((tap, stats))
    return taps, per_weight


def _merge(stats: list[_Stats]) -> dict[str, Any]:
    """One weight's statistics; a weight used by several ops sums over all its uses."""
    if len(stats) == 1:
        return stats[0].as_dict()
    out = stats[0].as_dict()
    out = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
    for s in stats[1:]:
        d = s.as_dict()
        out["rows"] += d["rows"]
        for k in ("act_sq", "hessian"):
            if k in out and d.get(k) is not None:
                out[k] = out[k] + d[k]
    return out


def _check_needs(needs: Iterable[str]) -> frozenset[str]:
    needs = frozenset(needs)
    bad = needs - {"act_sq", "hessian"}
    if bad:
        raise CalibrationError(f"collect_stats collects act_sq and hessian; use gradient_stats for {sorted(bad)}")
    return needs | {"act_sq"}


def collect_stats(
    program: ExportedProgram,
    data: CalibrationData,
    fqns: Iterable[str] | None = None,
    needs: Iterable[str] = ("act_sq",),
    *,
    progress: Progress | None = None,
) -> dict[str, dict[str, Any]]:
    """Activation statistics of every weight in ``fqns`` (default: all but embeddings), in one pass."""
    needs = _check_needs(needs)
    weights = _weights_for(program, fqns)
    taps, per_weight = _taps(program, weights, needs)
    runner = _GraphRunner(program)
    stop = _stop_index(runner, taps)
    batches = _stacked(program, data.batches) if data.join_batches else data.batches
    with torch.no_grad():
        for i, batch in enumerate(batches):
            if progress:
                progress(i, len(batches), "calibration batch")
            runner.run(runner.initial_env(batch, {}), 0, stop, taps)
    if progress:
        progress(len(batches), len(batches), "")
    return {w.fqn: _merge(per_weight[w.fqn]) for w in weights if w.fqn in per_weight}


def _stop_index(runner: _GraphRunner, taps: Mapping[torch.fx.Node, Any]) -> int:
    """Nothing after the last tapped node is needed."""
    index = {n: i for i, n in enumerate(runner.nodes)}
    return max(index[n] for n in taps) + 1 if taps else 0


Solve = Callable[[list[str], dict[str, dict[str, Any]]], Mapping[str, torch.Tensor]]


def sequential_solve(
    program: ExportedProgram,
    data: CalibrationData,
    solve: Solve,
    fqns: Iterable[str] | None = None,
    needs: Iterable[str] = ("act_sq",),
    *,
    progress: Progress | None = None,
) -> dict[str, torch.Tensor]:
    """Prune each weight on the activations of the already-pruned weights before it, in one pass.

    The graph runs on all batches up to the consumer at which a weight's
    statistics are complete; there ``solve(fqns, stats)`` gets the weights
    due at that point (q, k and v together: they read one activation) and
    returns their new values, which that consumer and everything after it
    then use. Each node runs once per batch. A weight used by several ops
    is solved once the statistics of its last use are in; its earlier uses
    run with the old value. Returns all new values by FQN.
    """
    needs = _check_needs(needs)
    weights = _weights_for(program, fqns)
    taps, per_weight = _taps(program, weights, needs)
    runner = _GraphRunner(program)
    index = {n: i for i, n in enumerate(runner.nodes)}
    fed_at = {stats: index[node] for node, pairs in taps.items() for _, stats in pairs}
    due: dict[int, list[str]] = {}
    for w in weights:
        if w.fqn in per_weight:
            due.setdefault(max(fed_at[s] for s in per_weight[w.fqn]), []).append(w.fqn)
    points = sorted(due)
    placeholder = {n.name: n for n in runner.placeholders}
    unsolved: dict[_Stats, set[str]] = {}  # the weights that still need each statistics object
    for f, stats_list in per_weight.items():
        for stats in stats_list:
            unsolved.setdefault(stats, set()).add(f)

    new_values: dict[str, torch.Tensor] = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        batches = _stacked(program, data.batches) if data.join_batches else data.batches
        envs = [runner.initial_env(b, {}) for b in batches]
        start = 0
        for k, point in enumerate(points):
            if progress:
                progress(k, len(points), f"{block_key(runner.nodes[point]) or runner.nodes[point].name}")
            # Nodes [start, point) with their taps, then the taps of `point` itself: its
            # statistics are complete before it runs with the weights solved here.
            for env in envs:
                runner.run(env, start, point, taps)
                runner.feed(env, point, taps)
            taps.pop(runner.nodes[point], None)  # `point` runs next without feeding them again
            fqns_here = due[point]
            updates = dict(solve(fqns_here, {f: _merge(per_weight[f]) for f in fqns_here}))
            new_values.update(updates)
            for f in fqns_here:
                for stats in per_weight[f]:
                    unsolved[stats].discard(f)
                    if not unsolved[stats]:
                        stats.act_sq = stats.hessian = None  # every reader solved: free its memory
            for env in envs:
                for f, t in updates.items():
                    env[placeholder[runner.param_node[f]]] = t
            start = point  # `point` runs next, with the new values
    if progress:
        progress(len(points), len(points), f"{time.perf_counter() - t0:.1f}s")
    return new_values


# -- losses and gradients -----------------------------------------------------------


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


def _flat_params(program: ExportedProgram) -> dict[str, torch.Tensor]:
    return {s.target: program.state_dict[s.target] for s in program.graph_signature.input_specs
            if s.kind == InputKind.PARAMETER}


def objective_loss(
    program: ExportedProgram,
    data: CalibrationData,
    overrides: Mapping[str, torch.Tensor] | None = None,
    max_batches: int | None = None,
) -> float:
    """Mean calibration loss of ``program``, with some parameters replaced by ``overrides``."""
    runner = _GraphRunner(program)
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
    weights = _weights_for(program, fqns) if fqns is not None else find_prunable_weights(program).weights
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

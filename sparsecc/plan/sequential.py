"""Sequential calibration: each weight solved on the activations of the already-solved weights before it.

A single pass over the graph: all batches run up to the consumer where a
weight's statistics are complete, the weight is solved there, and the pass
continues with the new value (SparseGPT's "true sequential" order at the cost
of one forward pass).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping

import torch
from torch.export import ExportedProgram

from sparsecc.plan.activation_stats import Stats, check_needs, merge_stats, taps_for, weights_for
from sparsecc.plan.calibration_data import CalibrationData, Progress
from sparsecc.plan.distributed import Ranks
from sparsecc.plan.graph_runner import GraphRunner, block_key, stacked

__all__ = ["Solve", "sequential_solve"]


Solve = Callable[[list[str], dict[str, dict[str, Any]]], Mapping[str, torch.Tensor]]


def sequential_solve(
    program: ExportedProgram,
    data: CalibrationData,
    solve: Solve,
    fqns: Iterable[str] | None = None,
    needs: Iterable[str] = ("act_sq",),
    *,
    progress: Progress | None = None,
    ranks: Ranks | None = None,
) -> dict[str, torch.Tensor]:
    """Prune each weight on the activations of the already-pruned weights before it, in one pass.

    The graph runs on all batches up to the consumer at which a weight's
    statistics are complete; there ``solve(fqns, stats)`` gets the weights
    due at that point (q, k and v together: they read one activation) and
    returns their new values, which that consumer and everything after it
    then use. Each node runs once per batch. A weight used by several ops
    is solved once the statistics of its last use are in; its earlier uses
    run with the old value. Returns all new values by FQN.

    With ``ranks`` (`sparsecc.plan.distributed`) this rank runs its share of
    the batches; at each point the statistics are summed onto the owners of
    the weights due, ``solve`` gets only this rank's weights, and every new
    value is broadcast from its owner.
    """
    needs = check_needs(needs)
    weights = weights_for(program, fqns)
    taps, per_weight = taps_for(program, weights, needs)
    runner = GraphRunner(program)
    index = {n: i for i, n in enumerate(runner.nodes)}
    fed_at = {stats: index[node] for node, pairs in taps.items() for _, stats in pairs}
    due: dict[int, list[str]] = {}
    for w in weights:
        if w.fqn in per_weight:
            due.setdefault(max(fed_at[s] for s in per_weight[w.fqn]), []).append(w.fqn)
    points = sorted(due)
    if ranks is not None:
        ranks.assign(f for p in points for f in due[p])
    placeholder = {n.name: n for n in runner.placeholders}
    unsolved: dict[Stats, set[str]] = {}  # the weights that still need each statistics object
    for f, stats_list in per_weight.items():
        for stats in stats_list:
            unsolved.setdefault(stats, set()).add(f)

    new_values: dict[str, torch.Tensor] = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        batches = stacked(program, data.batches) if data.join_batches else data.batches
        if ranks is not None:  # whole joined groups: each runs exactly as in one process
            batches = ranks.share(batches)
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
            if ranks is None:
                updates = dict(solve(fqns_here, {f: merge_stats(per_weight[f]) for f in fqns_here}))
            else:
                updates = _solve_shared(ranks, solve, fqns_here, per_weight, runner)
            new_values.update(updates)
            for f in fqns_here:
                for stats in per_weight[f]:
                    unsolved[stats].discard(f)
                    if not unsolved[stats]:
                        stats.act_sq = stats.hessian = stats._read = None  # every reader solved: free its memory
            for env in envs:
                for f, t in updates.items():
                    env[placeholder[runner.param_node[f]]] = t
            start = point  # `point` runs next, with the new values
    if progress:
        progress(len(points), len(points), f"{time.perf_counter() - t0:.1f}s")
    return new_values


def _solve_shared(ranks: Ranks, solve: Solve, fqns: list[str], per_weight: dict[str, list[Stats]],
                  runner: GraphRunner) -> dict[str, torch.Tensor]:
    """Sum the statistics due here onto their owners, solve this rank's weights, broadcast every new value."""
    readers: dict[Stats, list[str]] = {}
    for f, stats_list in per_weight.items():
        for stats in stats_list:
            readers.setdefault(stats, []).append(f)
    for stats in {s: None for f in fqns for s in per_weight[f]}:
        if not getattr(stats, "_reduced", False):
            ranks.reduce_stats(stats, readers[stats], label=fqns[0])
            stats._reduced = True  # type: ignore[attr-defined]
    mine = [f for f in fqns if ranks.owns(f)]
    solved = dict(solve(mine, {f: merge_stats(per_weight[f]) for f in mine})) if mine else {}
    out = {}
    for f in fqns:
        like = runner.program.state_dict.get(f)
        if like is None:
            like = runner.program.constants[f]
        out[f] = ranks.broadcast(solved.get(f), like.detach(), ranks.owner_of[f], label=f)
    return out

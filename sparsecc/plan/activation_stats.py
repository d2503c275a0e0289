"""Activation statistics per weight (``act_sq``, ``hessian``), collected in one pass over the graph.

Weights that read the same activation (q, k and v of one attention block)
share one statistics object, so each Hessian is accumulated once.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
import torch.fx
from torch.export import ExportedProgram

from sparsecc.core.analyze import PrunableWeight, find_prunable_weights, weight_uses
from sparsecc.plan.calibration_data import CalibrationData, CalibrationError, Progress
from sparsecc.plan.distributed import Ranks
from sparsecc.plan.graph_runner import GraphRunner, stacked, stop_index
from sparsecc.plan.taps import Tap, tap_for

__all__ = ["Stats", "collect_stats", "weights_for", "taps_for", "merge_stats", "check_needs"]


class Stats:
    """Running sums for one activation (shared by the weights that read it).

    The Hessian is symmetric, so for wide activations only its upper blocks
    are accumulated (`_CHUNKS` x `_CHUNKS` column blocks, 10 of 16 products)
    and the lower ones are mirrored when read. With a Hessian, ``act_sq`` is
    its diagonal.

    Each batch's sums are computed in the activation's dtype and added into
    float64 running sums, rounded once when read. Float64 holds the sum of a
    few float32 partials of similar magnitude exactly, so the result does
    not depend on the order the batches are summed in: data-parallel ranks
    (`sparsecc.plan.distributed`) that each sum their share and all-reduce in
    float64 get the single-process statistics bit for bit.
    """

    def __init__(self, needs: frozenset[str]):
        self.needs = needs
        self.rows = 0
        self.act_sq: torch.Tensor | None = None  # kept only without a Hessian (float64)
        self.hessian: torch.Tensor | None = None  # float64
        self.dtype = torch.float32  # of the statistics handed out
        self._read: dict[str, Any] | None = None  # the rounded statistics, until more rows arrive

    def add(self, mat: torch.Tensor) -> None:
        self.rows += mat.shape[-2]
        self.dtype = torch.promote_types(mat.dtype, torch.float32)
        self._read = None
        if "hessian" not in self.needs:
            sq = mat.square().sum(-2)
            self.act_sq = sq.double() if self.act_sq is None else self.act_sq.add_(sq)
            return
        k = mat.shape[-1]
        if self.hessian is None:
            self.hessian = torch.zeros(*mat.shape[:-2], k, k, dtype=torch.float64)
        if not _chunked(self.hessian):  # grouped convs, narrow activations: one product
            self.hessian.add_(mat.transpose(-1, -2) @ mat)
            return
        edges = _chunk_edges(k)
        for a in range(_CHUNKS):
            rows_a = slice(edges[a], edges[a + 1])
            cols = slice(edges[a], k)  # the diagonal block and everything right of it
            self.hessian[rows_a, cols].add_(mat[:, rows_a].t() @ mat[:, cols])

    def mirror(self) -> None:
        """Complete a chunked Hessian's lower blocks from its upper ones (idempotent)."""
        h = self.hessian
        if h is not None and _chunked(h):
            edges = _chunk_edges(h.shape[-1])
            for a in range(1, _CHUNKS):
                upper = slice(edges[a - 1], edges[a])
                h[edges[a]:, upper] = h[upper, edges[a]:].t()

    def as_dict(self) -> dict[str, Any]:
        if self._read is not None:  # one tensor for all readers (q, k, v share one SparseGPT factor)
            return self._read
        if self.hessian is None:
            sq = None if self.act_sq is None else self.act_sq.to(self.dtype)
            self._read = {"rows": self.rows, "act_sq": sq}
            return self._read
        self.mirror()
        h = self.hessian.to(self.dtype)
        self._read = {"rows": self.rows, "act_sq": torch.diagonal(h, dim1=-2, dim2=-1).clone(), "hessian": h}
        return self._read


# Hessians of activations at least this wide are accumulated by upper blocks only.
_CHUNKED_FROM = 256
_CHUNKS = 4


def _chunked(hessian: torch.Tensor) -> bool:
    return hessian.dim() == 2 and hessian.shape[-1] >= _CHUNKED_FROM


def _chunk_edges(k: int) -> list[int]:
    return [round(k * i / _CHUNKS) for i in range(_CHUNKS + 1)]


def weights_for(program: ExportedProgram, fqns: Iterable[str] | None) -> list[PrunableWeight]:
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


def taps_for(program: ExportedProgram, weights: Sequence[PrunableWeight], needs: frozenset[str]):
    """Per consumer node, the (tap, stats) pairs to feed; per weight, its stats objects.

    Consumers that read the same activation the same way (q, k and v) share one
    stats object, fed at the earliest of them in graph order: by the time any
    of them runs, the statistics of all are complete.
    """
    by_name = {n.name: n for n in program.graph.nodes}
    order = {n: i for i, n in enumerate(program.graph.nodes)}
    shared: dict[tuple, tuple[Tap, Stats, torch.fx.Node]] = {}
    per_weight: dict[str, list[Stats]] = {}
    for w in weights:
        for use_node, operand in weight_uses(program, by_name[w.node]):
            tap = tap_for(use_node, operand, w.role, w.shape)
            key = tap.key(use_node)
            if key not in shared:
                shared[key] = (tap, Stats(needs), use_node)
            elif order[use_node] < order[shared[key][2]]:
                shared[key] = (tap, shared[key][1], use_node)
            per_weight.setdefault(w.fqn, []).append(shared[key][1])
    taps: dict[torch.fx.Node, list[tuple[Tap, Stats]]] = {}
    for tap, stats, node in shared.values():
        taps.setdefault(node, []).append((tap, stats))
    return taps, per_weight


def merge_stats(stats: list[Stats]) -> dict[str, Any]:
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


def check_needs(needs: Iterable[str]) -> frozenset[str]:
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
    ranks: Ranks | None = None,
) -> dict[str, dict[str, Any]]:
    """Activation statistics of every weight in ``fqns`` (default: all but embeddings), in one pass.

    With ``ranks`` (`sparsecc.plan.distributed`) this rank runs its share of
    the batches, the sums go to each weight's owner, and only the weights
    this rank owns are returned.
    """
    needs = check_needs(needs)
    weights = weights_for(program, fqns)
    taps, per_weight = taps_for(program, weights, needs)
    runner = GraphRunner(program)
    stop = stop_index(runner, taps)
    batches = stacked(program, data.batches) if data.join_batches else data.batches
    if ranks is not None:  # whole joined groups: each runs exactly as in one process
        batches = ranks.share(batches)
    with torch.no_grad():
        for i, batch in enumerate(batches):
            if progress:
                progress(i, len(batches), "calibration batch")
            runner.run(runner.initial_env(batch, {}), 0, stop, taps)
    if progress:
        progress(len(batches), len(batches), "")
    fqns = [w.fqn for w in weights if w.fqn in per_weight]
    if ranks is not None:
        ranks.assign(fqns)
        readers: dict[Stats, list[str]] = {}
        for f in fqns:
            for stats in per_weight[f]:
                readers.setdefault(stats, []).append(f)
        for stats, fs in readers.items():
            ranks.reduce_stats(stats, fs, label=fs[0])
        fqns = [f for f in fqns if ranks.owns(f)]
    return {f: merge_stats(per_weight[f]) for f in fqns}

"""Block-wise reconstruction: solve the kept weights so each sparse layer reproduces the dense one.

After one-shot pruning, the program runs layer by layer in graph order on the
calibration batches twice, in lockstep: once as the sparse program (inputs
from the already-reconstructed layers before it) and once with the dense
weights (the teacher's). At each linear / conv / matmul weight ``W`` with
mask ``M``, the sparse activation ``Xs`` and the dense one ``Xd`` give

    min_W  || W Xs - Wd X* ||²  + λ ||W - W0||²   subject to  W[~M] = 0,
    X* = undo·Xd + (1 - undo)·Xs

(``W0`` the one-shot weights, or zero: ``ridge_to`` below) which splits into
one ridge-damped least-squares problem per output row on its kept columns
``S``:  ``(Hs[S,S] + λI) w = (G Wdᵀ + λ W0ᵀ)[S]`` with ``Hs = Xsᵀ Xs`` and
``G = Xsᵀ X*``. Zeros stay exactly zero (they are never solved for).
``undo = 0`` (the default) is SparseGPT's objective, the dense weights on the
sparse inputs, solved exactly on the kept weights where SparseGPT's greedy
updates only approximate it: on SmolLM2-135M at 2:4 it takes perplexity from
86.4 (SparseGPT) to 67.9. ``undo = 1`` targets the dense layer's output on
dense inputs, so each layer also undoes the error of the layers before it;
with the plain ridge that overfit a language model's calibration text
(SmolLM2: 85.9 on 8k calibration tokens, 179 on 33k of prose), with the
ridge towards the one-shot weights it takes SmolLM2 to 62.9 on 33k
calibration tokens.

Layers are visited in graph order and grouped into blocks (a numbered module
such as ``model.layers.3``, from ``nn_module_stack`` as calibration's
`block_key` does) for progress; only the activations live at the current
point are kept (the graph runner frees values after their last use). Gradient
steps on top (masks fixed) are the ``distill`` method, run after this one.

``extra`` keys: ``damp`` (ridge λ relative to the mean diagonal of ``Hs``,
default 0.01), ``ridge_to`` (what the ridge pulls the kept weights towards:
``one-shot``, the default, the pruned layer's own weights, so that a
direction the calibration data never excites keeps its one-shot value; or
``zero``, the plain ridge, which shrinks it away. From the same one-shot
programs, SmolLM2 2:4 reaches perplexity 67.9 against 77.5 with the plain
ridge and MiniLM 2:4 a cosine of 0.892 against 0.882; EfficientNet-Lite0 2:4
collapses with the plain ridge, most likely through the inputs its
calibration crops leave dark, whose weights that ridge zeroes), ``undo``
(between 0 and 1, default 0; above), ``exact_flops`` (a layer whose
row-by-row factorisations would cost more, and more than the
conjugate-gradient steps, is solved by those, default 2e9), ``cg_iters`` (default 20), ``loss_batches`` (the loss before
and after is reported on this many batches; default 64,
`sparsecc.recovery.outputs.loss_batch_count`).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.export import ExportedProgram

from sparsecc.core.analyze import as_matrix, find_prunable_weights, weight_uses
from sparsecc.core.program import state_tensor
from sparsecc.recovery.base import (
    Batch,
    RecoveryError,
    RecoveryOptions,
    RecoveryResult,
    assert_zeros_kept,
    batch_tokens,
    method_checkpoint,
    masks_of,
    program_with_weights,
    register_method,
    save_checkpoint,
    batch_sequence,
)
from sparsecc.recovery.lockstep import dense_overrides, dense_state, mask_applications
from sparsecc.recovery.outputs import loss_batch_count, output_loss, teacher_outputs

__all__ = ["reconstruct", "masked_least_squares"]


def masked_least_squares(hs: torch.Tensor, g: torch.Tensor, mask: torch.Tensor, damp: float = 0.01,
                         max_elements: int = 1 << 25, exact_flops: float = 2e9, warm: torch.Tensor | None = None,
                         iters: int = 20, method: str = "auto",
                         center: torch.Tensor | None = None) -> torch.Tensor:
    """Rows ``w`` minimising ``wᵀ Hs w - 2 wᵀ g + λ |w - c|²`` on each row's kept columns; masked entries
    exactly zero.

    ``hs`` is ``[K, K]`` (Xsᵀ Xs), ``g`` is ``[out, K]`` (row r: Xsᵀ Xd wd_r), ``mask`` ``[out, K]`` bool,
    λ = ``damp`` x the mean diagonal of ``hs``, ``c`` = ``center`` (``[out, K]``; zero when None): the
    ridge pulls the weights towards it where the data says little. Rows that share a kept pattern
    (blocks, channels) are solved together by Cholesky; otherwise each row's system is solved exactly (gathered in batches)
    when that costs under ``exact_flops``, else by ``iters`` steps of Jacobi-preconditioned conjugate
    gradients on all rows at once, started from ``warm`` (the one-shot weights): the same solution
    approached at one ``[out, K] x [K, K]`` product per step instead of ``out`` factorisations.
    ``method`` ("auto", "exact", "cg") overrides that choice.
    """
    out, k = mask.shape
    lam = damp * float(hs.diagonal().double().mean().clamp_min(1e-12))
    if center is not None:  # λ|w - c|² adds λc to the right-hand side of (Hs + λI) w = g
        g = g + lam * (center.to(g.dtype) * mask)
    patterns, inverse = torch.unique(mask, dim=0, return_inverse=True)
    if patterns.shape[0] * 4 <= out:  # few patterns: one system per pattern, many right-hand sides
        hs64, g64 = hs.double(), g.double()
        result = torch.zeros(out, k, dtype=torch.float64)
        for p in range(patterns.shape[0]):
            cols = patterns[p].nonzero().squeeze(1)
            rows = (inverse == p).nonzero().squeeze(1)
            if cols.numel() == 0:
                continue
            a = hs64[cols][:, cols] + lam * torch.eye(cols.numel(), dtype=torch.float64)
            result[rows.unsqueeze(1), cols] = _spd_solve(a, g64[rows][:, cols].t()).t()
        return result
    counts = mask.sum(1)
    cost = float((counts.double() ** 3).sum() / 3)
    if method == "auto":  # exact when cheap; batched small factorisations run ~10x slower per flop than products
        method = "exact" if warm is None or cost <= max(exact_flops, 0.1 * 2.0 * iters * out * k * k) else "cg"
    if method == "exact":
        return _exact_rows(hs.double(), g.double(), mask, lam, max_elements)
    start = warm if warm is not None else torch.zeros(out, k)
    return _masked_cg(hs.float(), g.float(), mask, lam, start.float(), iters).double()


def _exact_rows(hs: torch.Tensor, g: torch.Tensor, mask: torch.Tensor, lam: float,
                max_elements: int) -> torch.Tensor:
    out, k = mask.shape
    result = torch.zeros(out, k, dtype=torch.float64)
    counts = mask.sum(1)
    if bool((counts == counts[0]).all()) and int(counts[0]) > 0:  # N:M: same count per row, gather
        kept = int(counts[0])
        idx = mask.nonzero()[:, 1].reshape(out, kept)
        chunk = max(1, max_elements // (kept * kept))
        eye = lam * torch.eye(kept, dtype=hs.dtype)
        for s in range(0, out, chunk):
            ix = idx[s:s + chunk]
            a = hs[ix.unsqueeze(2), ix.unsqueeze(1)] + eye
            b = torch.gather(g[s:s + chunk], 1, ix).unsqueeze(2)
            result[s:s + chunk].scatter_(1, ix, _spd_solve(a, b).squeeze(2))
        return result
    for r in range(out):  # unstructured: each row its own system
        cols = mask[r].nonzero().squeeze(1)
        if cols.numel():
            a = hs[cols][:, cols] + lam * torch.eye(cols.numel(), dtype=hs.dtype)
            result[r, cols] = _spd_solve(a, g[r, cols].unsqueeze(1)).squeeze(1)
    return result


def _masked_cg(hs: torch.Tensor, g: torch.Tensor, mask: torch.Tensor, lam: float, warm: torch.Tensor,
               iters: int, tol: float = 1e-6) -> torch.Tensor:
    """Conjugate gradients for every row's system restricted to its kept columns, vectorised over rows."""
    m = mask.to(hs.dtype)
    a = hs + lam * torch.eye(hs.shape[0], dtype=hs.dtype)
    dinv = 1.0 / a.diagonal().clamp_min(1e-30)
    x = warm * m
    r = (g - x @ a) * m
    z = r * dinv
    p = z.clone()
    rz = (r * z).sum(1)
    stop = tol * tol * (g * g * m * dinv).sum(1).clamp_min(1e-30)
    for _ in range(iters):
        ap = (p @ a) * m
        alpha = rz / (p * ap).sum(1).clamp_min(1e-30)
        x.addcmul_(alpha.unsqueeze(1), p)
        r.addcmul_(alpha.unsqueeze(1), ap, value=-1)
        z = r * dinv
        rz_new = (r * z).sum(1)
        if bool((rz_new <= stop).all()):
            break
        p = z + (rz_new / rz.clamp_min(1e-30)).unsqueeze(1) * p
        rz = rz_new
    return x * m


def _spd_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    chol, info = torch.linalg.cholesky_ex(a)
    if bool((info == 0).all()):
        return torch.cholesky_solve(b, chol)
    return torch.linalg.lstsq(a, b).solution  # numerically singular despite damping: least norm


class _Accumulator:
    """Xsᵀ Xs and Xsᵀ Xd for one activation (shared by the weights that read it), in float32, and
    per weight ``|| Wd Xd ||²``, the reference its relative error is measured against."""

    def __init__(self) -> None:
        self.hs: torch.Tensor | None = None
        self.c: torch.Tensor | None = None
        self.dense: dict[str, torch.Tensor] = {}  # fqn -> Wd as [out, K]
        self.ref: dict[str, float] = {}

    def add(self, xs: torch.Tensor, xd: torch.Tensor) -> None:
        if self.hs is None:
            k = xs.shape[-1]
            self.hs, self.c = xs.new_zeros(k, k), xs.new_zeros(k, k)
        self.hs.addmm_(xs.t(), xs)
        self.c.addmm_(xs.t(), xd)
        for fqn, wd in self.dense.items():
            self.ref[fqn] = self.ref.get(fqn, 0.0) + float((xd @ wd.t()).double().square().sum())


def _layer_error(w: torch.Tensor, wd: torch.Tensor, acc: _Accumulator, ref: float) -> float:
    """|| W Xs - Wd Xd ||² / || Wd Xd ||² from the accumulated products."""
    w, wd = w.double(), wd.double()
    err = (w @ acc.hs.double() * w).sum() - 2 * (w @ acc.c.double() * wd).sum() + ref
    return float(err.clamp_min(0)) / max(ref, 1e-30)


def _plan(program: ExportedProgram, masks: Mapping[str, torch.Tensor], dense: Mapping[str, torch.Tensor]):
    """Per weight to solve: its analysis entry, the tap nodes that feed it; and why others are skipped."""
    from sparsecc.plan.calibrate import _tap_for

    analysis = find_prunable_weights(program).by_fqn()
    by_name = {n.name: n for n in program.graph.nodes}
    order = {n: i for i, n in enumerate(program.graph.nodes)}
    shared: dict[tuple, tuple[Any, _Accumulator, torch.fx.Node]] = {}
    per_weight: dict[str, list[_Accumulator]] = {}
    skipped: dict[str, str] = {}
    for fqn in masks:
        w = analysis.get(fqn)
        if w is None or w.role not in ("linear", "conv", "matmul"):
            skipped[fqn] = f"role {w.role if w else 'unknown'}"
            continue
        if w.groups != 1:
            skipped[fqn] = f"grouped conv (groups={w.groups})"
            continue
        if fqn not in dense or tuple(dense[fqn].shape) != tuple(w.shape):
            skipped[fqn] = "no dense weight of the same shape in the teacher"
            continue
        accs = []
        for use_node, operand in weight_uses(program, by_name[w.node]):
            tap = _tap_for(use_node, operand, w.role, w.shape)
            key = tap.key(use_node)
            if key not in shared:
                shared[key] = (tap, _Accumulator(), use_node)
            elif order[use_node] < order[shared[key][2]]:
                shared[key] = (tap, shared[key][1], use_node)
            accs.append(shared[key][1])
        if len(accs) != 1:
            skipped[fqn] = f"{len(accs)} uses (reconstruction handles one)"
            continue
        accs[0].dense[fqn] = as_matrix(dense[fqn].detach(), w.output_axis, w.reduction_axis).reshape(
            w.out_size, -1).float()
        per_weight[fqn] = accs
    taps: dict[torch.fx.Node, list[tuple[Any, _Accumulator]]] = {}
    for tap, acc, node in shared.values():
        if any(acc is a for accs in per_weight.values() for a in accs):
            taps.setdefault(node, []).append((tap, acc))
    return analysis, taps, per_weight, skipped


def _feed(runner: Any, envs_s: list, envs_d: list, node: torch.fx.Node, pairs: list) -> None:
    from sparsecc.plan.calibrate import _activation_matrix

    for env_s, env_d in zip(envs_s, envs_d):
        args_s = torch.fx.node.map_arg(node.args, lambda n: env_s[n])
        args_d = torch.fx.node.map_arg(node.args, lambda n: env_d[n])
        for tap, acc in pairs:
            acc.add(_activation_matrix(args_s[tap.operand], tap), _activation_matrix(args_d[tap.operand], tap))


def _solve_layer(program: ExportedProgram, w: Any, acc: _Accumulator, mask: torch.Tensor, dense: torch.Tensor,
                 solver: dict[str, Any]) -> tuple[torch.Tensor, tuple[float, float]]:
    """The reconstructed weight (in its own layout) and its relative output error before and after."""
    m = as_matrix(mask, w.output_axis, w.reduction_axis)
    shape = m.shape
    m = m.reshape(w.out_size, -1)
    wd = as_matrix(dense.detach(), w.output_axis, w.reduction_axis).reshape(w.out_size, -1)
    ws = as_matrix(state_tensor(program, w.fqn).detach(), w.output_axis, w.reduction_axis)
    ws = ws.reshape(w.out_size, -1) * m
    undo = solver["undo"]  # target Wd (undo Xd + (1 - undo) Xs): Xsᵀ of it is g's [K, K] factor
    cross = acc.c.t() if undo == 1.0 else undo * acc.c.t() + (1.0 - undo) * acc.hs
    g = wd.float() @ cross
    new = masked_least_squares(acc.hs, g, m, solver["damp"], warm=ws, exact_flops=solver["exact_flops"],
                               iters=solver["iters"], center=ws if solver["ridge_to"] == "one-shot" else None)
    ref = acc.ref[w.fqn]
    before, after = _layer_error(ws, wd, acc, ref), _layer_error(new, wd, acc, ref)
    if _objective(new, g, acc) > _objective(ws, g, acc):  # damping can cost more than it buys: keep one-shot
        new, after = ws.double(), before
    value = new.reshape(shape).movedim((0, -1), (w.output_axis, w.reduction_axis))
    return value.to(dense.dtype).contiguous(), (before, after)


def _objective(w: torch.Tensor, g: torch.Tensor, acc: _Accumulator) -> float:
    """|| W Xs - T ||² less its constant || T ||², for the target T whose Xsᵀ-product is ``g``."""
    w = w.double()
    return float((w @ acc.hs.double() * w).sum() - 2 * (w * g.double()).sum())


def solver_settings(options: RecoveryOptions) -> dict[str, Any]:
    """The checked ``options:`` values of a reconstruct stage (RecoveryError names a wrong one)."""
    extra = options.extra
    solver = {"damp": options.number("damp", 0.01), "exact_flops": options.number("exact_flops", 2e9),
              "iters": options.number("cg_iters", 20, int), "undo": options.number("undo", 0.0),
              "ridge_to": str(extra.get("ridge_to", "one-shot"))}
    if solver["ridge_to"] not in ("one-shot", "zero"):
        raise RecoveryError(f"reconstruct: ridge_to must be one-shot or zero, got {solver['ridge_to']!r}")
    if not 0.0 <= solver["undo"] <= 1.0:
        raise RecoveryError(f"reconstruct: undo must be between 0 and 1, got {solver['undo']}")
    if solver["damp"] < 0 or solver["iters"] < 1:
        raise RecoveryError(f"reconstruct: damp must be >= 0 and cg_iters >= 1, got {solver['damp']} and "
                            f"{solver['iters']}")
    return solver


@register_method("reconstruct", options=("damp", "exact_flops", "cg_iters", "undo", "ridge_to", "loss_batches"),
                 settings=solver_settings)
def reconstruct(program: ExportedProgram, teacher: Any, batches: Sequence[Batch], options: RecoveryOptions,
                progress: Callable[[str], None] | None = None) -> RecoveryResult:
    """Layer-by-layer masked least squares against the dense layers (see the module docstring)."""
    from sparsecc.plan.calibrate import _GraphRunner, block_key

    t0 = time.perf_counter()
    batches = batch_sequence(batches)
    if not batches:
        raise RecoveryError("reconstruct needs at least one calibration batch")
    solver = solver_settings(options)
    damp = solver["damp"]
    masks = masks_of(program)
    if not masks:
        raise RecoveryError("reconstruct: the program has no sparse weight (no MaskSpec); sparsify it first")
    dense = dense_state(teacher)
    # the reported loss on the first ``loss_batches`` batches (a full pass of a large LM costs minutes)
    scored = batches[:loss_batch_count(options, len(batches))]
    targets = teacher_outputs(teacher, scored)
    loss_before = output_loss(program, targets, scored, options)
    analysis, taps, per_weight, skipped = _plan(program, masks, dense)
    runner = _GraphRunner(program)
    index = {n: i for i, n in enumerate(runner.nodes)}
    fed_at = {id(acc): index[node] for node, pairs in taps.items() for _, acc in pairs}
    due: dict[int, list[str]] = {}
    for fqn, accs in per_weight.items():
        due.setdefault(max(fed_at[id(a)] for a in accs), []).append(fqn)
    placeholder = {n.name: n for n in runner.placeholders}
    applied = mask_applications(runner.nodes)
    ck_path, ck = method_checkpoint(options, "reconstruct")
    solved: dict[str, torch.Tensor] = dict(ck["solved"]) if ck else {}
    errors: dict[str, tuple[float, float]] = dict(ck["errors"]) if ck else {}
    overrides = dense_overrides(program, masks, dense)
    points = sorted(due)
    last_block = None
    with torch.no_grad():
        envs_s = [runner.initial_env(b, {}) for b in batches]
        envs_d = [runner.initial_env(b, overrides) for b in batches]
        start = 0
        for k, point in enumerate(points):
            fqns = due[point]
            if all(f in solved for f in fqns):  # resumed: reuse, skip the statistics
                for env_s, env_d in zip(envs_s, envs_d):
                    runner.run(env_s, start, point)
                    runner.run(env_d, start, point)
            else:
                for env_s, env_d in zip(envs_s, envs_d):
                    runner.run(env_s, start, point)
                    runner.run(env_d, start, point)
                _feed(runner, envs_s, envs_d, runner.nodes[point], taps.get(runner.nodes[point], []))
                for fqn in fqns:
                    solved[fqn], errors[fqn] = _solve_layer(program, analysis[fqn], per_weight[fqn][0],
                                                            masks[fqn], dense[fqn], solver)
                if ck_path:
                    save_checkpoint(ck_path, {"fingerprint": options.fingerprint(), "solved": solved,
                                              "errors": errors})
            for acc_list in (per_weight[f] for f in fqns):
                for acc in acc_list:
                    acc.hs = acc.c = None  # free as soon as read
                    acc.dense = {}
            for env in envs_s:
                for fqn in fqns:
                    env[placeholder[runner.param_node[fqn]]] = solved[fqn]
                    for mul in applied.get(fqn, ()):
                        if mul in env:
                            env[mul] = solved[fqn]  # already zero where masked
            block = block_key(runner.nodes[point]) or runner.nodes[point].name
            if progress is not None and block != last_block:
                spent = time.perf_counter() - t0
                progress(f"reconstruct: {block} ({k + 1}/{len(points)} layers, {spent:.0f}s, "
                         f"about {spent / (k + 1) * (len(points) - k - 1):.0f}s left)")
                last_block = block
            start = point
    result_program = program_with_weights(program, solved)
    assert_zeros_kept(result_program, masks)
    loss_after = output_loss(result_program, targets, scored, options)
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
    details = {
        "layers": len(solved), "skipped": len(skipped), "skipped_layers": dict(skipped), "damp": damp,
        "layer_error_before": mean([e[0] for e in errors.values()]),
        "layer_error_after": mean([e[1] for e in errors.values()]),
        "layer_errors": {f: list(e) for f, e in errors.items()},
    }
    tokens = sum(batch_tokens(b) for b in batches)
    return RecoveryResult(result_program, "reconstruct", len(solved), loss_before, loss_after,
                          time.perf_counter() - t0, tokens, [loss_before, loss_after], details)

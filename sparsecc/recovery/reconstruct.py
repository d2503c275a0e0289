"""Block-wise reconstruction: solve the kept weights so each sparse layer reproduces the dense one.

After one-shot pruning, the program runs layer by layer in graph order on the
calibration batches twice, in lockstep: once as the sparse program (inputs
from the already-reconstructed layers before it) and once with the dense
weights (the teacher's). At each linear / conv / matmul weight ``W`` with
mask ``M`` the sparse activation ``Xs`` and the dense one ``Xd`` give

    min_W  || W Xs - Wd Xd ||²  + λ ||W||²   subject to  W[~M] = 0

which splits into one ridge-damped least-squares problem per output row on
its kept columns ``S``:  ``(Hs[S,S] + λI) w = (C Wdᵀ)[S]`` with ``Hs = Xsᵀ Xs``
and ``C = Xsᵀ Xd``. Zeros stay exactly zero (they are never solved for).
Targets from dense inputs make each layer undo the error of the layers
before it, which plain one-shot solvers (SparseGPT: ``Wd Xs``) do not.

Optionally (``extra.block_steps > 0``) a few Adam steps per block (a numbered
module such as ``model.layers.3``, found from ``nn_module_stack`` as
calibration's `block_key` does) then lower the block output MSE against the
dense block with masks fixed. Only the current point's activations are kept
in memory (the graph runner frees values after their last use).

``extra`` keys: ``damp`` (ridge λ relative to the mean diagonal of ``Hs``,
default 0.01), ``block_steps`` (default 0), ``block_lr`` (default ``lr``).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.export import ExportedProgram

from sparsecc.core.analyze import as_matrix, find_prunable_weights, weight_uses
from sparsecc.core.ir import get_node_info
from sparsecc.core.program import placeholders_by_target, state_tensor
from sparsecc.recovery.base import (
    Batch,
    RecoveryError,
    RecoveryOptions,
    RecoveryResult,
    assert_zeros_kept,
    batch_tokens,
    load_checkpoint,
    masks_of,
    program_with_weights,
    register_method,
    save_checkpoint,
)
from sparsecc.recovery.outputs import output_loss, teacher_outputs

__all__ = ["reconstruct", "masked_least_squares"]


def masked_least_squares(hs: torch.Tensor, g: torch.Tensor, mask: torch.Tensor, damp: float = 0.01,
                         max_elements: int = 1 << 25) -> torch.Tensor:
    """Rows ``w`` minimising ``wᵀ Hs w - 2 wᵀ g`` on each row's kept columns; masked entries exactly zero.

    ``hs`` is ``[K, K]`` (Xsᵀ Xs), ``g`` is ``[out, K]`` (row r: Xsᵀ Xd wd_r), ``mask`` ``[out, K]`` bool.
    Rows that share a kept pattern (blocks, channels) are solved together; rows with the
    same number of kept columns (N:M) in batches of gathered systems; the rest one by one.
    """
    out, k = mask.shape
    hs = hs.double()
    g = g.double()
    lam = damp * float(hs.diagonal().mean().clamp_min(1e-12))
    result = torch.zeros(out, k, dtype=torch.float64)
    patterns, inverse = torch.unique(mask, dim=0, return_inverse=True)
    if patterns.shape[0] * 4 <= out:  # few patterns: one system per pattern, many right-hand sides
        for p in range(patterns.shape[0]):
            cols = patterns[p].nonzero().squeeze(1)
            rows = (inverse == p).nonzero().squeeze(1)
            if cols.numel() == 0:
                continue
            a = hs[cols][:, cols] + lam * torch.eye(cols.numel(), dtype=hs.dtype)
            result[rows.unsqueeze(1), cols] = _spd_solve(a, g[rows][:, cols].t()).t()
        return result
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


def _spd_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    chol, info = torch.linalg.cholesky_ex(a)
    if bool((info == 0).all()):
        return torch.cholesky_solve(b, chol)
    return torch.linalg.lstsq(a, b).solution  # numerically singular despite damping: least norm


class _Accumulator:
    """Xsᵀ Xs, Xsᵀ Xd and Xdᵀ Xd for one activation (shared by the weights that read it)."""

    def __init__(self) -> None:
        self.hs: torch.Tensor | None = None
        self.c: torch.Tensor | None = None
        self.hd: torch.Tensor | None = None

    def add(self, xs: torch.Tensor, xd: torch.Tensor) -> None:
        xs, xd = xs.double(), xd.double()
        if self.hs is None:
            k = xs.shape[-1]
            self.hs, self.c, self.hd = (xs.new_zeros(k, k) for _ in range(3))
        self.hs.addmm_(xs.t(), xs)
        self.c.addmm_(xs.t(), xd)
        self.hd.addmm_(xd.t(), xd)


def _layer_error(w: torch.Tensor, wd: torch.Tensor, acc: _Accumulator) -> float:
    """|| W Xs - Wd Xd ||² / || Wd Xd ||² from the accumulated products."""
    w, wd = w.double(), wd.double()
    err = (w @ acc.hs * w).sum() - 2 * (w @ acc.c * wd).sum() + (wd @ acc.hd * wd).sum()
    ref = (wd @ acc.hd * wd).sum().clamp_min(1e-30)
    return float(err.clamp_min(0) / ref)


def _dense_state(teacher: Any) -> Mapping[str, torch.Tensor]:
    if isinstance(teacher, ExportedProgram):
        return teacher.state_dict
    if isinstance(teacher, torch.nn.Module):
        return dict(teacher.named_parameters())
    raise RecoveryError(f"reconstruct needs the dense model (an ExportedProgram or nn.Module) as teacher, "
                        f"got {type(teacher).__name__}")


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


def _dense_overrides(program: ExportedProgram, masks: Mapping[str, torch.Tensor],
                     dense: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights and mask constants that turn the sparse program back into the dense one."""
    out: dict[str, torch.Tensor] = {}
    for target, node in placeholders_by_target(program).items():
        info = get_node_info(node)
        if info is None or info.spec is None or info.spec.fqn not in dense:
            continue
        if tuple(dense[info.spec.fqn].shape) == tuple(state_tensor(program, target).shape):
            out[target] = dense[info.spec.fqn].detach()
            if info.mask is not None:
                out[info.mask] = torch.ones_like(state_tensor(program, info.mask))
    return out


@register_method("reconstruct")
def reconstruct(program: ExportedProgram, teacher: Any, batches: Sequence[Batch], options: RecoveryOptions,
                progress: Callable[[str], None] | None = None) -> RecoveryResult:
    """Layer-by-layer masked least squares against the dense layers (see the module docstring)."""
    from sparsecc.plan.calibrate import _GraphRunner, block_key

    t0 = time.perf_counter()
    batches = list(batches)
    if not batches:
        raise RecoveryError("reconstruct needs at least one calibration batch")
    damp = float(options.extra.get("damp", 0.01))
    masks = masks_of(program)
    if not masks:
        raise RecoveryError("reconstruct: the program has no sparse weight (no MaskSpec); sparsify it first")
    dense = _dense_state(teacher)
    targets = teacher_outputs(teacher, batches)
    loss_before = output_loss(program, targets, batches, options)
    analysis, taps, per_weight, skipped = _plan(program, masks, dense)
    runner = _GraphRunner(program)
    index = {n: i for i, n in enumerate(runner.nodes)}
    fed_at = {id(acc): index[node] for node, pairs in taps.items() for _, acc in pairs}
    due: dict[int, list[str]] = {}
    for fqn, accs in per_weight.items():
        due.setdefault(max(fed_at[id(a)] for a in accs), []).append(fqn)
    placeholder = {n.name: n for n in runner.placeholders}
    # an unfolded program reads W * mask from a mul node that has already run at the solve point
    applied: dict[str, list[torch.fx.Node]] = {}
    for n in runner.nodes:
        info = get_node_info(n) if n.op == "call_function" else None
        if info is not None and info.apply_mask_of:
            applied.setdefault(info.apply_mask_of, []).append(n)
    ck_path = f"{options.checkpoint_dir}/reconstruct.pt" if options.checkpoint_dir else None
    ck = load_checkpoint(ck_path) if ck_path else None
    if ck is not None and ck.get("fingerprint") != options.fingerprint():
        raise RecoveryError(f"checkpoint {ck_path} was written with other recovery options; delete it")
    solved: dict[str, torch.Tensor] = dict(ck["solved"]) if ck else {}
    errors: dict[str, tuple[float, float]] = dict(ck["errors"]) if ck else {}
    overrides = _dense_overrides(program, masks, dense)
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
                    w = analysis[fqn]
                    acc = per_weight[fqn][0]
                    mask = as_matrix(masks[fqn], w.output_axis, w.reduction_axis).reshape(w.out_size, -1)
                    wd = as_matrix(dense[fqn].detach(), w.output_axis, w.reduction_axis).reshape(w.out_size, -1)
                    ws = as_matrix(state_tensor(program, fqn).detach(), w.output_axis, w.reduction_axis)
                    ws = ws.reshape(w.out_size, -1) * mask
                    new = masked_least_squares(acc.hs, wd.double() @ acc.c.t(), mask, damp)
                    before, after = _layer_error(ws, wd, acc), _layer_error(new, wd, acc)
                    if after > before:  # the damping can cost more than it buys: keep the one-shot weights
                        new = ws.double()
                    errors[fqn] = (before, min(before, after))
                    shape = as_matrix(masks[fqn], w.output_axis, w.reduction_axis).shape
                    value = new.reshape(shape).movedim((0, -1), (w.output_axis, w.reduction_axis))
                    solved[fqn] = value.to(dense[fqn].dtype).contiguous()
                if ck_path:
                    save_checkpoint(ck_path, {"fingerprint": options.fingerprint(), "solved": solved,
                                              "errors": errors})
            for acc_list in (per_weight[f] for f in fqns):
                for acc in acc_list:
                    acc.hs = acc.c = acc.hd = None  # free as soon as read
            for env in envs_s:
                for fqn in fqns:
                    env[placeholder[runner.param_node[fqn]]] = solved[fqn]
                    for mul in applied.get(fqn, ()):
                        if mul in env:
                            env[mul] = solved[fqn]  # already zero where masked
            block = block_key(runner.nodes[point]) or runner.nodes[point].name
            if progress is not None and block != last_block:
                progress(f"reconstruct: {block} ({k + 1}/{len(points)} layers, "
                         f"{time.perf_counter() - t0:.0f}s)")
                last_block = block
            start = point
    result_program = program_with_weights(program, solved)
    assert_zeros_kept(result_program, masks)
    loss_after = output_loss(result_program, targets, batches, options)
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
    details = {
        "layers": len(solved), "skipped": len(skipped), "skipped_layers": dict(skipped), "damp": damp,
        "layer_error_before": mean([e[0] for e in errors.values()]),
        "layer_error_after": mean([e[1] for e in errors.values()]),
        "layer_errors": {f: list(e) for f, e in errors.items()},
    }
    if int(options.extra.get("block_steps", 0)) > 0:
        from sparsecc.recovery.block_tune import tune_blocks

        result_program, tuned = tune_blocks(result_program, teacher, batches, options, masks, progress)
        details.update(tuned)
        assert_zeros_kept(result_program, masks)
        loss_after = output_loss(result_program, targets, batches, options)
    tokens = sum(batch_tokens(b) for b in batches)
    return RecoveryResult(result_program, "reconstruct", len(solved), loss_before, loss_after,
                          time.perf_counter() - t0, tokens, [loss_before, loss_after], details)

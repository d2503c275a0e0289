"""Block-wise reconstruction by gradient steps: each sparse block trained to reproduce the dense block.

`reconstruct` solves each layer alone in closed form; what a layer cannot fix
alone (a softmax, a gate, the interplay of a block's projections) stays. This
method trains a whole block at once. The program runs block by block in graph
order on the training batches twice, in lockstep, as `reconstruct` does: once
sparse (inputs from the already-tuned blocks before) and once dense. At each
block (a numbered module such as ``model.layers.3``, `block_key`), the block's
own parameters take ``steps`` Adam steps on

    sum over the block's outputs o of  || o(sparse block, Xs) - o* ||² / || o* ||²  (per token, below),
    o* = undo · o(dense block, Xd) + (1 - undo) · o(dense block, Xs)

one training batch per step (a seeded order, cycled), with every masked weight
multiplied by its mask in the forward pass and written back exactly zero. With
``undo = 1`` (the default) a block also undoes the error of the blocks before
it. Only one block's graph is differentiated at a time, so memory is one block,
its activations on one batch, and the block-boundary values of every batch.
A block whose error on the measured batches ends higher than it began keeps
its starting weights. Run it after `reconstruct` (a good start) or alone.

The block's parameters are those only its own nodes read (weights shared with
another block, such as tied embeddings, stay fixed): the kept entries of its
sparse weights and, with ``train: all`` (the default), its dense parameters
(norm gains, biases) too; ``train: masked`` trains the sparse weights only.

``extra`` keys: ``undo`` (between 0 and 1, default 1), ``train`` (``all`` or
``masked``), ``normalize`` (``token``, the default: each token's error against
its own norm, averaged, for outputs ``[batch, tokens, features]``; ``total``:
the whole output's error against its norm. From the middle layers on, a few
tokens of a language model's residual stream carry massive activations, and
the total error then sees little else), ``measure_batches`` (the batches each block's error before and after is
measured on, default 4), ``loss_batches`` (the whole program's loss before and
after, `sparsecc.recovery.outputs.loss_batch_count`). ``steps`` and ``lr`` are
per block. A checkpoint is written after every block; an interrupted run
resumes at the block it was in and ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch.export import ExportedProgram

from sparsecc.core.program import state_tensor
from sparsecc.recovery.base import (
    Batch,
    RecoveryError,
    RecoveryOptions,
    RecoveryResult,
    assert_zeros_kept,
    batch_tokens,
    checked_batches,
    masks_of,
    method_checkpoint,
    program_with_weights,
    register_method,
    save_checkpoint,
)
from sparsecc.recovery.lockstep import dense_overrides, dense_state, mask_applications
from sparsecc.recovery.outputs import loss_batch_count, output_loss, teacher_outputs

__all__ = ["block_tune", "block_segments"]


@dataclass
class _Block:
    key: str
    start: int  # node index range [start, stop) in the runner's order
    stop: int
    params: dict[str, torch.fx.Node]  # state-dict target -> placeholder node, read only inside the block
    outputs: list[torch.fx.Node]  # values the block hands on (read at or after ``stop``)


def block_segments(runner: Any) -> list[tuple[str, int, int]]:
    """Maximal runs of call_function nodes with one `block_key`, as ``(key, start, stop)``; other nodes
    (placeholders, get_attr) do not break a run, and call_function nodes without a module are in none."""
    from sparsecc.plan.graph_runner import block_key

    segments: list[tuple[str, int, int]] = []
    key, start, last = None, 0, -1
    for i, node in enumerate(runner.nodes):
        if node.op != "call_function":
            continue
        k = block_key(node)
        if k != key:
            if key is not None:
                segments.append((key, start, last + 1))
            key, start = k, i
        last = i
    if key is not None:
        segments.append((key, start, last + 1))
    return segments


def _blocks(runner: Any, masks: dict[str, torch.Tensor], train: str) -> list[_Block]:
    """The segments holding a sparse weight, with the parameters only they read and their outputs."""
    index = {n: i for i, n in enumerate(runner.nodes)}
    placeholder = {n.name: n for n in runner.placeholders}
    applied = mask_applications(runner.nodes)
    readers: dict[str, list[int]] = {}  # target -> indices of the nodes that read it (through W * mask)
    for target, name in runner.param_node.items():
        users = []
        for u in placeholder[name].users:
            muls = applied.get(target, ())
            users += [index[v] for v in u.users] if u in muls else [index[u]]
        readers[target] = users
    trainable = {t for t in runner.program.graph_signature.parameters  # not buffers, masks or constants
                 if state_tensor(runner.program, t).is_floating_point()}
    blocks: list[_Block] = []
    for key, start, stop in block_segments(runner):
        params = {t: placeholder[runner.param_node[t]] for t, users in readers.items()
                  if t in trainable and users and all(start <= i < stop for i in users)
                  and (t in masks or train == "all")}
        if not any(t in masks for t in params):
            continue
        outputs = [runner.nodes[i] for i in range(start, stop)
                   if runner.nodes[i].op == "call_function" and runner.last_use[runner.nodes[i]] >= stop]
        seen = sum(b.key.split("#")[0] == key for b in blocks)  # a module met again later: its own name
        blocks.append(_Block(f"{key}#{seen + 1}" if seen else key, start, stop, params, outputs))
    return blocks


def _relative_error(out: torch.Tensor, ref: torch.Tensor, per_token: bool) -> torch.Tensor:
    """|| out - ref ||² / || ref ||²; with ``per_token``, of each token's vector ([batch, tokens, features])
    against its own norm, averaged: a language model's few tokens with massive activations (norms 10-100x
    the others from the middle layers on) would otherwise be all the loss sees."""
    err = (out.float() - ref).square()
    if per_token and ref.dim() == 3:
        return (err.sum(-1) / ref.square().sum(-1).clamp_min(1e-12)).mean()
    return err.sum() / ref.square().sum().clamp_min(1e-12)


def _block_loss(env: dict, block: _Block, targets: dict[torch.fx.Node, Any], per_token: bool) -> torch.Tensor:
    total = torch.zeros(())
    for o in block.outputs:
        out, ref = env[o], targets.get(o)
        if isinstance(out, torch.Tensor) and isinstance(ref, torch.Tensor) and out.is_floating_point():
            total = total + _relative_error(out, ref, per_token)
    return total


def _outputs(env: dict, block: _Block) -> dict[torch.fx.Node, Any]:
    return {o: env[o].detach().float() if isinstance(env[o], torch.Tensor) else env[o] for o in block.outputs}


class _BlockRun:
    """One block's forward on one batch with given parameter values (weights masked on the way)."""

    def __init__(self, runner: Any, block: _Block, masks: dict[str, torch.Tensor], applied: dict):
        self.runner, self.block, self.masks, self.applied = runner, block, masks, applied

    def __call__(self, base_env: dict, values: dict[str, torch.Tensor]) -> dict:
        env = dict(base_env)
        for target, node in self.block.params.items():
            v = values[target]
            if target in self.masks:
                v = v * self.masks[target]
                for mul in self.applied.get(target, ()):
                    if mul in env:  # W * mask already ran before the block: replace its value
                        env[mul] = v
            env[node] = v
        self.runner.run(env, self.block.start, self.block.stop)
        return env


def _error(run: _BlockRun, envs: Sequence[dict], targets: Sequence[dict], values: dict, n: int,
           per_token: bool) -> float:
    with torch.no_grad():
        return sum(float(_block_loss(run(envs[j], values), run.block, targets[j], per_token))
                   for j in range(n)) / n


def _tune_block(run: _BlockRun, envs_s: Sequence[dict], targets: Sequence[dict], start: dict[str, torch.Tensor],
                options: RecoveryOptions, seed: int, measure: int,
                per_token: bool) -> tuple[dict[str, torch.Tensor], float, float]:
    """Adam on the block's parameters; the new values (masked) and the block's error before and after."""
    params = {t: v.detach().clone().float().requires_grad_(True) for t, v in start.items()}
    opt = torch.optim.Adam(list(params.values()), lr=options.lr)
    before = _error(run, envs_s, targets, params, measure, per_token)
    order = torch.randperm(len(envs_s), generator=torch.Generator().manual_seed(seed)).tolist()
    with torch.enable_grad():
        for step in range(options.steps):
            j = order[step % len(order)]
            loss = _block_loss(run(envs_s[j], params), run.block, targets[j], per_token)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    new = {t: (p.detach() * run.masks[t] if t in run.masks else p.detach()).to(start[t].dtype)
           for t, p in params.items()}
    after = _error(run, envs_s, targets, new, measure, per_token)
    if not after <= before:  # the steps made it worse (or NaN): keep the block as it came
        return dict(start), before, before
    return new, before, after


def block_settings(options: RecoveryOptions) -> dict[str, Any]:
    """The checked ``options:`` values of a block-tune stage (RecoveryError names a wrong one)."""
    extra = options.extra
    cfg = {"undo": options.number("undo", 1.0), "train": str(extra.get("train", "all")),
           "normalize": str(extra.get("normalize", "token")), "measure": options.number("measure_batches", 4, int)}
    if not 0.0 <= cfg["undo"] <= 1.0:
        raise RecoveryError(f"block-tune: undo must be between 0 and 1, got {cfg['undo']}")
    if cfg["train"] not in ("all", "masked"):
        raise RecoveryError(f"block-tune: train must be all or masked, got {cfg['train']!r}")
    if cfg["normalize"] not in ("token", "total"):
        raise RecoveryError(f"block-tune: normalize must be token or total, got {cfg['normalize']!r}")
    if cfg["measure"] < 1:
        raise RecoveryError(f"block-tune: measure_batches must be >= 1, got {cfg['measure']}")
    return cfg


@register_method("block-tune", options=("undo", "train", "normalize", "measure_batches", "loss_batches"),
                 settings=block_settings)
def block_tune(program: ExportedProgram, teacher: Any, batches: Sequence[Batch], options: RecoveryOptions,
               progress: Callable[[str], None] | None = None) -> RecoveryResult:
    """Block-by-block Adam steps towards the dense blocks' outputs (see the module docstring)."""
    from sparsecc.plan.graph_runner import GraphRunner

    t0 = time.perf_counter()
    batches = checked_batches(batches, teacher, "block-tune")
    cfg = block_settings(options)
    undo, train, normalize, measure = cfg["undo"], cfg["train"], cfg["normalize"], min(cfg["measure"], len(batches))
    masks = masks_of(program)
    if not masks:
        raise RecoveryError("block-tune: the program has no sparse weight (no MaskSpec); sparsify it first")
    dense = dense_state(teacher)
    runner = GraphRunner(program)
    blocks = _blocks(runner, masks, train)
    if not blocks:
        raise RecoveryError("block-tune: no block of the program holds a sparse weight of its own "
                            "(blocks are numbered modules, from the graph's nn_module_stack)")
    missing = [t for b in blocks for t in b.params if t in masks and t not in dense]
    if missing:
        raise RecoveryError(f"block-tune: the teacher has no dense weight for {', '.join(missing[:5])}")
    scored = batches[:loss_batch_count(options, len(batches))]
    targets_out = teacher_outputs(teacher, scored)
    loss_before = output_loss(program, targets_out, scored, options)
    ck_path, ck = method_checkpoint(options, "block-tune")
    solved: dict[str, torch.Tensor] = dict(ck["solved"]) if ck else {}
    errors: dict[str, tuple[float, float]] = dict(ck["errors"]) if ck else {}
    applied = mask_applications(runner.nodes)
    overrides = dense_overrides(program, masks, dense)
    dense_values = {t: dense[t].detach() if t in dense else state_tensor(program, t).detach()
                    for b in blocks for t in b.params}
    with torch.no_grad():
        envs_s = [runner.initial_env(b, {}) for b in batches]
        envs_d = [runner.initial_env(b, overrides) for b in batches]
        at = 0
        for k, block in enumerate(blocks):
            for env in (*envs_s, *envs_d):
                runner.run(env, at, block.start)
            run = _BlockRun(runner, block, masks, applied)
            targets = []
            for env_s, env_d in zip(envs_s, envs_d):
                runner.run(env_d, block.start, block.stop)
                t = _outputs(env_d, block)
                if undo < 1.0:
                    own = _outputs(run(env_s, {p: dense_values[p] for p in block.params}), block)
                    t = {o: undo * v + (1.0 - undo) * own[o] if isinstance(v, torch.Tensor) else v
                         for o, v in t.items()}
                targets.append(t)
            if block.key in errors:  # resumed: this block was tuned before the interruption
                new = {t: solved[t] for t in block.params}
            else:
                start = {t: state_tensor(program, t).detach() for t in block.params}
                new, before, after = _tune_block(run, envs_s, targets, start, options, options.seed + k, measure,
                                                 normalize == "token")
                solved.update(new)
                errors[block.key] = (before, after)
                if ck_path:
                    save_checkpoint(ck_path, {"fingerprint": options.fingerprint(), "solved": solved,
                                              "errors": errors})
            for j, env in enumerate(envs_s):
                envs_s[j] = run(env, new)
            at = block.stop
            if progress is not None:
                spent = time.perf_counter() - t0
                before, after = errors[block.key]
                progress(f"block-tune: {block.key} ({k + 1}/{len(blocks)} blocks), error {before:.4g} -> "
                         f"{after:.4g}, {spent:.0f}s, about {spent / (k + 1) * (len(blocks) - k - 1):.0f}s left")
    result_program = program_with_weights(program, solved)
    assert_zeros_kept(result_program, masks)
    loss_after = output_loss(result_program, targets_out, scored, options)
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
    details = {
        "blocks": len(blocks), "steps_per_block": options.steps, "undo": undo, "train": train,
        "normalize": normalize,
        "block_error_before": mean([e[0] for e in errors.values()]),
        "block_error_after": mean([e[1] for e in errors.values()]),
        "block_errors": {b: list(e) for b, e in errors.items()},
    }
    tokens = sum(batch_tokens(b) for b in batches)  # the data it fitted, as reconstruct counts it
    return RecoveryResult(result_program, "block-tune", options.steps * len(blocks), loss_before, loss_after,
                          time.perf_counter() - t0, tokens, [loss_before, loss_after], details)

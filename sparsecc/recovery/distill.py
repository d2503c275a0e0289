"""Recovery after pruning: a short knowledge-distillation run on the captured program.

The student is the pruned program (``program.module()`` is an ordinary,
trainable ``nn.Module``); the teacher is the dense model or program. Each
step runs both on one batch and moves the student's outputs towards the
teacher's:

- ``kl``: KL(teacher || student) of the softmax at ``temperature`` (classifier
  and language-model logits), scaled by T²;
- ``cosine``: 1 - cosine similarity along the last axis plus the mean squared
  error relative to the teacher's mean square (hidden states, embeddings);
- ``auto``: ``kl`` for 2-D outputs with more than 100 classes or for
  ``causal-lm`` tasks, else ``cosine``.

Only the student's parameters change; normalisation statistics (BatchNorm
running means) stay as they are, since the program was captured in eval mode.
The result is a new `ExportedProgram` with the same graph and the trained
weights: it lowers to every backend like the program it came from.

`recalibrate_batchnorm` comes first for convolutional networks: removing
channels changes what every later BatchNorm sees, while its running mean and
variance still describe the dense network's activations. Re-estimating them
on a few calibration batches (no gradients; "adaptive BN" of EagleEye, Li et
al. 2020) repairs much of the damage before any training.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch.export import ExportedProgram

from sparsecc.core.program import ProgramEditor
from sparsecc.recovery.schedules import interpolate
from sparsecc.recovery.base import (
    RecoveryError,
    RecoveryOptions,
    RecoveryResult,
    TrainingLoop,
    apply_masks_,
    assert_zeros_kept,
    batch_tokens,
    batch_unit,
    mask_gradients_,
    masks_of,
    program_with_weights,
    register_method,
    trainable_copy,
    batch_sequence,
    checked_batches,
)
from sparsecc.recovery.hidden import HiddenTaps, hidden_loss
from sparsecc.recovery.outputs import (batch_loss, distillation_loss, float_leaves, output_loss, teacher_outputs,
                                      token_mask)
from sparsecc.recovery.qat import Int8StraightThrough, int8_weights

__all__ = ["DistillResult", "distill", "distill_fixed_masks", "distillation_loss", "mask_sparsity_regularizer", "recalibrate_batchnorm"]


@dataclass
class DistillResult:
    program: ExportedProgram
    losses: list[float] = field(default_factory=list)  # one per step
    seconds: float = 0.0

    @property
    def first_loss(self) -> float:
        return self.losses[0] if self.losses else math.nan

    @property
    def last_loss(self) -> float:
        """Mean of the last 10% of steps (one step is noisy)."""
        if not self.losses:
            return math.nan
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return sum(tail) / len(tail)


def mask_sparsity_regularizer(plan: Any, strength: float = 1e-4) -> Callable[[torch.nn.Module], torch.Tensor]:
    """MaskSparsity's pruning-aware push: an L1 penalty on the BatchNorm / GroupNorm scales of
    only the channels ``plan`` will remove (the kept channels train freely).

    Use it with `distill` on the *unpruned* program (``regularizer=...``), then shrink with
    the same plan: the channels removed have already been driven towards zero.
    """
    from sparsecc.passes.structured import axis_keep

    kept = plan.kept_by_atom()
    targets: dict[str, torch.Tensor] = {}
    for gid in plan.kept:
        for m in plan.analysis.groups[gid].members:
            if m.role == "norm":
                keep = axis_keep(plan.analysis, m.target, m.axis, kept)
                if keep is not None and not keep.all():
                    targets[m.target] = torch.from_numpy(~keep)
    if not targets:
        raise ValueError("the plan removes no channel that has a BatchNorm / GroupNorm scale")

    def penalty(module: torch.nn.Module) -> torch.Tensor:
        params = dict(module.named_parameters())
        return strength * sum(params[t][drop].abs().sum() for t, drop in targets.items())

    penalty.targets = targets  # type: ignore[attr-defined]
    return penalty


def _auto_kind(out: torch.Tensor, task: str) -> str:
    if task == "causal-lm" or (out.dim() == 2 and out.shape[-1] > 100):
        return "kl"
    return "cosine"


def distill(
    student: ExportedProgram,
    teacher: torch.nn.Module | ExportedProgram,
    batches: Sequence[tuple[tuple[Any, ...], dict[str, Any]]] | Iterable[tuple[tuple[Any, ...], dict[str, Any]]],
    *,
    steps: int = 100,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    loss: str = "auto",
    temperature: float = 2.0,
    task: str = "",
    regularizer: Callable[[torch.nn.Module], torch.Tensor] | None = None,
    train: Sequence[str] = (),
    progress: Callable[[int, int, float], None] | None = None,
) -> DistillResult:
    """Train ``student`` for ``steps`` steps (cycling over ``batches``) to match ``teacher``.

    ``batches`` are ``(args, kwargs)`` the programs take, e.g.
    `sparsecc.data.calibration_inputs`. Returns the trained program and
    the loss of every step; ``student`` itself is not changed. ``regularizer(module)``
    adds a penalty to every step (see `mask_sparsity_regularizer`). ``train``
    (globs on parameter names) trains only the parameters it matches, the rest
    stay frozen: with a few hundred images, training only the normalisation
    scales and shifts (``["*bn*"]``, say) cannot memorise them the way training
    every weight does.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    batches = batch_sequence(batches)
    if not batches:
        raise ValueError("distill needs at least one batch")
    t0 = time.perf_counter()
    # program.module() shares its parameters with the program: train a copy
    module = copy.deepcopy(student.module())
    named = [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]
    params = [p for n, p in named if not train or any(fnmatch.fnmatchcase(n, pat) for pat in train)]
    if not params:
        raise ValueError(f"train={list(train)} matches none of the student's parameters "
                         f"(e.g. {', '.join(n for n, _ in named[:3])})")
    for _, p in named:
        p.requires_grad_(False)  # frozen unless selected
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    targets = teacher_outputs(teacher, batches)  # kept, or computed again per use when too large
    losses: list[float] = []
    for step, i in zip(range(steps), itertools.cycle(range(len(batches)))):
        args, kwargs = batches[i]
        outs = float_leaves(module(*args, **kwargs))
        total = torch.zeros(())
        for s, t in zip(outs, targets[i], strict=True):
            total = total + distillation_loss(s, t, _auto_kind(t, task) if loss == "auto" else loss, temperature,
                                              token_mask(kwargs))
        if regularizer is not None:
            total = total + regularizer(module)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
        if progress is not None:
            progress(step + 1, steps, losses[-1])
    # the trained weights back into a program with the student's graph
    trained = dict(module.state_dict(keep_vars=False))
    editor = ProgramEditor(student)
    for target in list(editor.state_dict):
        if target in trained and isinstance(editor.state_dict[target], torch.nn.Parameter):
            editor.set_tensor(target, trained[target].detach().clone())
    # tied parameters stay one tensor
    by_id: dict[int, list[str]] = {}
    for target, t in student.state_dict.items():
        by_id.setdefault(id(t), []).append(target)
    for names in by_id.values():
        for other in names[1:]:
            editor.state_dict[other] = editor.state_dict[names[0]]
    return DistillResult(editor.finish(), losses, time.perf_counter() - t0)


_BATCH_NORMS = (torch.ops.aten._native_batch_norm_legit_no_training.default, torch.ops.aten.batch_norm.default)


def recalibrate_batchnorm(
    program: ExportedProgram,
    batches: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
    *,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[ExportedProgram, list[str]]:
    """Running mean and variance of every BatchNorm re-estimated on ``batches``, in graph order.

    Each BatchNorm's statistics are measured on the outputs of the layers before
    it, which already use their re-estimated statistics (one pass over the graph).
    Returns the new program and the buffers that changed. Raises ValueError for a
    program without BatchNorm or without batches.
    """
    from sparsecc.plan.calibrate import _GraphRunner

    batches = batch_sequence(batches)
    if not batches:
        raise ValueError("recalibrate_batchnorm needs at least one batch")
    runner = _GraphRunner(program)
    norms = [(i, n) for i, n in enumerate(runner.nodes) if n.op == "call_function" and n.target in _BATCH_NORMS]
    if not norms:
        raise ValueError("the program has no BatchNorm (aten._native_batch_norm_legit_no_training) to recalibrate")
    buffer_of = {name: target for target, name in runner.param_node.items()}
    new: dict[str, torch.Tensor] = {}
    start = 0
    with torch.no_grad():
        envs = [runner.initial_env(b, {}) for b in batches]
        for k, (i, node) in enumerate(norms):
            if progress is not None:
                progress(k, len(norms), node.name)
            for env in envs:
                runner.run(env, start, i)
            total = squares = 0
            count = 0
            for env in envs:
                x = env[node.args[0]].double()
                dims = [d for d in range(x.dim()) if d != 1]  # all but the channel axis
                total, squares = total + x.sum(dims), squares + x.square().sum(dims)
                count += x.numel() // x.shape[1]
            mean = total / count
            var = (squares / count - mean.square()).clamp_min(0) * (count / max(count - 1, 1))  # unbiased, as torch keeps it
            for arg, value in ((node.args[3], mean), (node.args[4], var)):
                value = value.to(envs[0][arg].dtype)
                for env in envs:
                    env[arg] = value
                new[buffer_of[arg.name]] = value
            start = i  # the norm itself runs next, with its new statistics
    if progress is not None:
        progress(len(norms), len(norms), "")
    editor = ProgramEditor(program)
    for target, value in new.items():
        editor.set_tensor(target, value)
    return editor.finish(), sorted(new)


# -- the `distill` recovery method: fixed masks, checkpoints, resume ------------------------------


def distill_settings(options: RecoveryOptions) -> dict[str, Any]:
    """The checked ``options:`` values of a distill stage (RecoveryError names a wrong one)."""
    extra = options.extra
    train = extra.get("train", ())
    cfg = {"train": (train,) if isinstance(train, str) else tuple(str(t) for t in train),
           "weight_decay": options.number("weight_decay", 0.0), "grad_clip": options.number("grad_clip", 1.0),
           "qat": bool(extra.get("qat", True)), "hidden_weight": options.number("hidden_weight", 1.0)}
    if cfg["weight_decay"] < 0 or cfg["grad_clip"] <= 0:
        raise RecoveryError(f"distill: weight_decay must be >= 0 and grad_clip > 0, got {cfg['weight_decay']} "
                            f"and {cfg['grad_clip']}")
    lr_schedule(options)  # checks lr_schedule and warmup
    return cfg


@register_method("distill", options=("train", "weight_decay", "grad_clip", "qat", "lr_schedule", "warmup",
                                     "hidden", "hidden_weight"), settings=distill_settings)
def distill_fixed_masks(program, teacher, batches, options, progress=None):
    """End-to-end distillation of the sparse ``program`` towards ``teacher`` with its masks fixed.

    Every step masks the gradients of pruned entries (no optimizer state builds
    up there) and re-zeros them after the update, so masked weights stay exactly
    zero; `assert_zeros_kept` checks the result. Works for unstructured, N:M, block
    and channel masks alike, and for structured (shrunk) programs, which have no
    mask: every weight trains. ``extra``: ``weight_decay`` (0), ``train`` (globs of
    parameters to train; default all), ``grad_clip`` (1.0; 0 turns it off),
    ``hidden`` (off; ``auto``, ``norm`` or ``linear``: also match the teacher's hidden
    states at those points, `sparsecc.recovery.hidden`), ``hidden_weight`` (1.0),
    ``lr_schedule`` (``constant`` or ``cosine``: decay to 0 over the steps),
    ``warmup`` (steps of linear warm-up, 0) and ``qat`` (on): int8 weights (a recipe's
    ``quantize:``) train quantization-aware, each step on their int8 values with a
    straight-through gradient (`sparsecc.recovery.qat`), and come back on their grid.
    """
    t0 = time.perf_counter()
    batches = checked_batches(batches, teacher, "distill")
    masks = masks_of(program)
    targets = teacher_outputs(teacher, batches)
    loss_before = output_loss(program, targets, batches, options)
    module = trainable_copy(program)
    cfg = distill_settings(options)
    train = cfg["train"]
    named = [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]
    params = [p for n, p in named if not train or any(fnmatch.fnmatchcase(n, pat) for pat in train)]
    if not params:
        raise RecoveryError(f"distill: options.train={list(train)} matches no parameter "
                            f"(e.g. {', '.join(n for n, _ in named[:3])})")
    for _, p in named:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    apply_masks_(module, masks)  # an unfolded program's stored weights may hold nonzeros under the mask
    opt = torch.optim.AdamW(params, lr=options.lr, weight_decay=cfg["weight_decay"])
    clip = cfg["grad_clip"]
    lr_at = lr_schedule(options)
    taps = _hidden_taps(module, teacher, options)
    ste = Int8StraightThrough(module, int8_weights(program) if cfg["qat"] else {})

    def step(i: int, b: int) -> tuple[float, int]:
        args, kwargs = batches[b]
        for group in opt.param_groups:
            group["lr"] = lr_at(i)  # a pure function of the step: a resumed run sees the same rates
        with ste:
            loss = batch_loss(module(*args, **kwargs), targets[b], options, kwargs)
            if taps is not None:
                loss = loss + taps.loss(args, kwargs, token_mask(kwargs, options))
            if not torch.isfinite(loss):
                raise RecoveryError(f"distill: the loss is {float(loss)} at step {i + 1}; lower lr ({options.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
        mask_gradients_(module, masks)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        apply_masks_(module, masks)  # weight decay and Adam's moments must not revive a pruned entry
        return float(loss.detach()), batch_tokens(batches[b])

    loop = TrainingLoop(options, module, opt, len(batches), name="distill", progress=progress,
                        unit=batch_unit(batches[0]))
    history = loop.run(step)
    with ste:  # quantization-aware: the result holds the int8 values training saw, not the latent floats
        result = program_with_weights(program, module.state_dict())
    assert_zeros_kept(result, masks)
    loss_after = output_loss(result, targets, batches, options)
    return RecoveryResult(result, "distill", loop.step, loss_before, loss_after, time.perf_counter() - t0,
                          loop.tokens, history, {"resumed_from": loop.resumed_from,
                                                 "train_seconds": round(loop.seconds, 3),
                                                 "masked_weights": len(masks),
                                                 "hidden_states": len(taps.student) if taps else 0,
                                                 "qat_int8_weights": len(ste)})


def lr_schedule(options: RecoveryOptions) -> Callable[[int], float]:
    """The learning rate at each step: ``options.lr``, after ``extra.warmup`` steps of linear warm-up,
    held (``lr_schedule: constant``) or decayed to 0 along a half cosine (``cosine``)."""
    kind = str(options.extra.get("lr_schedule", "constant"))
    if kind not in ("constant", "cosine"):
        raise RecoveryError(f"distill: lr_schedule must be constant or cosine, got {kind!r}")
    warmup = options.number("warmup", 0, int)
    if warmup < 0 or warmup >= max(options.steps, 1):
        raise RecoveryError(f"distill: warmup must lie in [0, steps={options.steps}), got {warmup}")

    def at(step: int) -> float:
        if step < warmup:
            return options.lr * (step + 1) / warmup
        return interpolate(options.lr, 0.0, step - warmup, options.steps - warmup,
                           "cosine" if kind == "cosine" else "constant")

    return at


class _HiddenTargets:
    """The student's and the teacher's hidden-state taps, and the weighted loss between them."""

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module, points: str, weight: float) -> None:
        self.student, self.teacher = HiddenTaps(student, points), HiddenTaps(teacher, points)
        self.teacher_module, self.weight = teacher, weight
        if len(self.student) != len(self.teacher):
            raise RecoveryError(f"distill: the student has {len(self.student)} {self.student.points} points, "
                                f"the teacher {len(self.teacher)}; hidden-state distillation needs the same graph")

    def loss(self, args: tuple, kwargs: dict, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Call after the student's forward on (args, kwargs): runs the teacher and compares the taps
        (at the real tokens ``mask`` keeps)."""
        self.teacher.clear()
        with torch.no_grad():
            self.teacher_module(*args, **kwargs)
        value = self.weight * hidden_loss(self.student.values, self.teacher.values, mask)
        self.student.clear()
        self.teacher.clear()
        return value


def _hidden_taps(module: torch.nn.Module, teacher: Any, options: RecoveryOptions) -> _HiddenTargets | None:
    points = options.extra.get("hidden")
    if not points:
        return None
    if not isinstance(teacher, ExportedProgram):
        raise RecoveryError("distill: hidden-state distillation needs the teacher as a captured program")
    weight = float(options.extra.get("hidden_weight", 1.0))
    # teacher.module() builds a new module on each call: tapping it leaves the teacher program as it was
    return _HiddenTargets(module, teacher.module(), "auto" if points is True else str(points), weight)

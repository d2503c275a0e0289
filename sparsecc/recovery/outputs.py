"""The teacher's outputs and the student-vs-teacher loss every recovery method reports.

``loss_before`` / ``loss_after`` of a `RecoveryResult` are this loss on the
training batches, so methods compare on one scale: KL at the options'
temperature for logits, cosine + relative MSE for hidden states and
embeddings (`distillation_loss`).

Padding is not a target: when a batch carries an ``attention_mask`` with
padded positions, token outputs ``[batch, tokens, ...]`` are compared only at
the real tokens (`token_mask`; ``options.extra["mask_padding"] = False`` turns
this off). A sentence encoder's outputs at pad positions are never used (its
embedding pools over the mask), yet in a batch of sentences padded to the
longest they are about half of all positions.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch.export import ExportedProgram

from sparsecc.recovery.base import Batch, RecoveryOptions, batch_sequence

__all__ = ["distillation_loss", "float_leaves", "teacher_outputs", "TeacherOutputs", "TEACHER_CACHE_BYTES",
           "loss_kind", "output_loss", "batch_loss", "token_mask", "real_tokens",
           "LOSS_BATCHES", "loss_batch_count", "mean_pooled"]

_LOGIT_TASKS = ("causal-lm", "image-classification", "classification", "lm")


def token_mask(kwargs: dict[str, Any] | None, options: RecoveryOptions | None = None) -> torch.Tensor | None:
    """The batch's ``attention_mask`` as booleans ``[batch, tokens]`` when it pads some position, else None
    (also when ``options.extra["mask_padding"]`` is False)."""
    if options is not None and not options.extra.get("mask_padding", True):
        return None
    mask = (kwargs or {}).get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or bool(mask.all()):
        return None
    return mask.bool()


def real_tokens(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x[mask]`` (the real tokens' rows, ``[n, ...]``) when ``x`` is ``[batch, tokens, ...]`` under ``mask``, else ``x``."""
    if mask is None or x.dim() < 3 or tuple(x.shape[:2]) != tuple(mask.shape):
        return x
    return x[mask]


def mean_pooled(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``[batch, tokens, d]`` averaged over the tokens ``mask`` keeps (all when None): a sentence
    encoder's embedding."""
    if mask is None or tuple(x.shape[:2]) != tuple(mask.shape):
        return x.mean(1)
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float = 2.0,
                      mask: torch.Tensor | None = None, pooled: float = 0.0) -> torch.Tensor:
    """The loss between one student output and the teacher's (see the module docstring), over the
    positions ``mask`` keeps (`token_mask`; all of them when None). ``pooled`` > 0 adds, for token
    outputs ``[batch, tokens, d]`` under the cosine loss, that weight times one minus the cosine of their
    `mean_pooled` embeddings: the vector a sentence encoder is used by."""
    if student.shape != teacher.shape:
        raise ValueError(f"student output {list(student.shape)} does not match the teacher's {list(teacher.shape)}")
    if kind == "kl":
        t = temperature
        batch = student.shape[0] if student.dim() else 1  # what batchmean divides by
        # batchmean of the unmasked outputs: KL summed over every kept position, divided by the batch
        return F.kl_div(F.log_softmax(real_tokens(student, mask) / t, -1),
                        F.log_softmax(real_tokens(teacher, mask) / t, -1), log_target=True,
                        reduction="sum") / batch * t * t
    sentence = 0.0
    if kind == "cosine" and pooled > 0 and student.dim() == 3:
        sentence = pooled * (1 - F.cosine_similarity(mean_pooled(student, mask), mean_pooled(teacher, mask),
                                                     dim=-1).mean())
    student, teacher = real_tokens(student, mask), real_tokens(teacher, mask)
    if kind == "cosine":
        cos = 1 - F.cosine_similarity(student, teacher, dim=-1).mean()
        return cos + (student - teacher).pow(2).mean() / teacher.pow(2).mean().clamp_min(1e-12) + sentence
    if kind == "mse":
        return (student - teacher).pow(2).mean()
    raise ValueError(f"unknown distillation loss {kind!r}; use kl, cosine, mse or auto")


def float_leaves(out: Any) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _module(model: Any) -> torch.nn.Module:
    return model.module() if isinstance(model, ExportedProgram) else model.eval()


# Teacher outputs of all batches together are kept up to this size; past it each is computed again when used.
TEACHER_CACHE_BYTES = 1 << 29


class TeacherOutputs(Sequence):
    """The teacher's floating-point outputs per batch, in batch order. Kept when all of them fit in
    `TEACHER_CACHE_BYTES`; otherwise each is computed again when asked for (the teacher never changes, so
    the values are the same): a language model's logits over 2,000 windows of 256 tokens would hold 100 GB."""

    def __init__(self, teacher: Any, batches: Sequence[Batch], budget: int | None = None) -> None:
        self._module, self._batches = _module(teacher), batch_sequence(batches)
        first = self._run(0) if self._batches else []
        per_batch = sum(t.numel() * t.element_size() for t in first)
        limit = TEACHER_CACHE_BYTES if budget is None else budget
        self.stored = per_batch * len(self._batches) <= limit
        self._kept: dict[int, list[torch.Tensor]] = {0: first} if self._batches else {}
        if self.stored:
            for i in range(1, len(self._batches)):
                self._kept[i] = self._run(i)

    def _run(self, i: int) -> list[torch.Tensor]:
        a, k = self._batches[i]
        with torch.no_grad():
            return [t.detach() for t in float_leaves(self._module(*a, **k))]

    def __len__(self) -> int:
        return len(self._batches)

    def __getitem__(self, i: int) -> list[torch.Tensor]:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(f"batch {i} of {len(self)}")
        i %= len(self)
        if i not in self._kept:
            out = self._run(i)
            self._kept = {i: out}  # only the last one: memory stays at one batch's outputs
            return out
        return self._kept[i]


def teacher_outputs(teacher: Any, batches: Sequence[Batch]) -> TeacherOutputs:
    """The teacher's floating-point outputs on every batch (`TeacherOutputs`: kept, or computed on use)."""
    return TeacherOutputs(teacher, batches)


def loss_kind(target: torch.Tensor, options: RecoveryOptions) -> str:
    """``options.loss``, or for ``auto``: KL for logits (an LM / classifier task, or 2-D outputs over
    more than 100 classes), cosine for everything else (hidden states, embeddings)."""
    if options.loss != "auto":
        return options.loss
    task = str(options.extra.get("task", ""))
    if task in _LOGIT_TASKS or (target.dim() == 2 and target.shape[-1] > 100):
        return "kl"
    return "cosine"


def batch_loss(outputs: Any, targets: list[torch.Tensor], options: RecoveryOptions,
               kwargs: dict[str, Any] | None = None) -> torch.Tensor:
    """Sum over output tensors of the distillation loss between student ``outputs`` and ``targets``
    on the batch called with ``kwargs`` (its padding is left out, `token_mask`)."""
    total = torch.zeros(())
    leaves = float_leaves(outputs)
    if len(leaves) != len(targets):
        raise ValueError(f"the student returns {len(leaves)} floating outputs, the teacher {len(targets)}")
    mask = token_mask(kwargs, options)
    pooled = float(options.extra.get("pooled", 0.0))
    for s, t in zip(leaves, targets):
        total = total + distillation_loss(s, t, loss_kind(t, options), options.temperature, mask, pooled)
    return total


# loss_before / loss_after are measured on this many training batches unless options.extra says
LOSS_BATCHES = 64


def loss_batch_count(options: RecoveryOptions, available: int) -> int:
    """How many of the ``available`` training batches the loss before and after is measured on:
    ``options.extra["loss_batches"]``, else `LOSS_BATCHES` (the batches are in a seeded random order,
    so the first ones are a fair sample; over all 400 batches of a paragraph distillation the two
    measurements cost as much as 200 training steps)."""
    n = int(options.extra.get("loss_batches", LOSS_BATCHES))
    if n < 1:
        raise ValueError(f"loss_batches must be >= 1, got {n}")
    return min(n, available)


def output_loss(program: Any, targets: Sequence[list[torch.Tensor]], batches: Sequence[Batch],
                options: RecoveryOptions) -> float:
    """Mean `batch_loss` of ``program`` over the first `loss_batch_count` of ``batches`` (no gradients)."""
    module = _module(program)
    n = loss_batch_count(options, len(batches))
    with torch.no_grad():
        losses = [float(batch_loss(module(*a, **k), targets[i], options, k)) for i, (a, k) in enumerate(batches[:n])]
    return sum(losses) / len(losses)

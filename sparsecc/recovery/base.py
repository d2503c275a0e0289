"""The recovery interface: options, results, the method registry and the helpers every method shares.

A recovery method is a function ``fn(program, teacher, batches, options, progress)``
that returns a `RecoveryResult` whose program has the same graph as ``program``,
trained weights (and, for learned masks, new masks), and every masked weight
exactly zero. Methods register themselves by name with `register_method`
when their module is imported (`sparsecc.recovery` imports them all).

Shared helpers:

- `masks_of` / `assert_zeros_kept`: the zero pattern a program carries and the
  check that a trained program kept it;
- `trainable_copy` / `program_with_weights`: a trainable ``nn.Module`` copy of
  a program and the trained weights written back into the program's graph;
- `TrainingLoop`: seeded steps over a fixed number of batches with progress
  (loss, tokens/s, time left), periodic atomic checkpoints, resume, and Ctrl-C
  (the step in flight finishes, a checkpoint is written, then the interrupt is
  re-raised). A resumed run equals the uninterrupted seeded run bit for bit:
  the checkpoint holds the model, the optimizer, every RNG state, the step and
  the data order.
"""

from __future__ import annotations

import copy
import difflib
import os
import random
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch.export import ExportedProgram

from sparsecc.core.ir import get_node_info
from sparsecc.core.program import ProgramEditor, placeholders_by_target, state_tensor, tensor_leaves
from sparsecc.errors import SparseccError, UsageError, VerificationError
from sparsecc.plan.recovery_options import KNOWN_METHODS, RecoveryOptions  # parsed with the recipe, below this layer

__all__ = [
    "Batch", "batch_sequence", "checked_batches", "RecoveryOptions", "RecoveryResult", "RecoveryFn", "RecoveryError",
    "METHODS", "register_method", "COMMON_OPTIONS", "method_options", "check_options", "get_method",
    "available_methods", "masks_of", "apply_masks_", "mask_gradients_", "assert_zeros_kept", "trainable_copy",
    "program_with_weights", "batch_tokens", "batch_unit", "TrainingLoop", "save_checkpoint", "load_checkpoint",
    "checkpoint_path", "method_checkpoint", "StaleCheckpointError",
]

Batch = tuple[tuple, dict]  # (args, kwargs), one call of the model, as CalibrationData.batches


def batch_sequence(batches: Iterable[Batch]) -> Sequence[Batch]:
    """``batches`` as an indexable sequence: a list or any sized, indexable sequence is kept as it is
    (`sparsecc.data.calibration.ImageBatches` makes each batch when read), anything else is listed."""
    return batches if isinstance(batches, Sequence) else list(batches)


def checked_batches(batches: Iterable[Batch], teacher: Any, method: str) -> Sequence[Batch]:
    """``batches`` as a sequence, after the checks every teacher-driven method makes: at least one
    batch, and a teacher to match."""
    batches = batch_sequence(batches)
    if not batches:
        raise RecoveryError(f"{method} needs at least one training batch")
    if teacher is None:
        raise RecoveryError(f"{method} needs a teacher (the dense program)")
    return batches


METHODS = KNOWN_METHODS


class RecoveryError(SparseccError, RuntimeError):
    """A recovery run failed: the message names the method, the step or the weight at fault."""


class StaleCheckpointError(UsageError, RecoveryError):
    """A checkpoint written with other recovery options: the folder given is wrong, not the run."""


@dataclass
class RecoveryResult:
    program: ExportedProgram  # same graph, trained weights (and masks), masked weights exactly zero
    method: str
    steps: int
    loss_before: float
    loss_after: float
    seconds: float
    tokens: int  # real training tokens (padding left out), or samples for image models
    history: list[float]
    details: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """The JSON-able record (no program, no history) that manifests and reports keep."""
        return {"method": self.method, "steps": self.steps, "loss_before": self.loss_before,
                "loss_after": self.loss_after, "seconds": round(self.seconds, 3), "tokens": self.tokens,
                **{k: v for k, v in self.details.items() if isinstance(v, (int, float, str, bool, type(None)))}}


RecoveryFn = Callable[[ExportedProgram, Any, Sequence[Batch], RecoveryOptions, Callable[[str], None] | None],
                      RecoveryResult]

_REGISTRY: dict[str, RecoveryFn] = {}
_OPTIONS: dict[str, frozenset[str]] = {}
_SETTINGS: dict[str, Callable[[RecoveryOptions], Any]] = {}

# ``options:`` keys every method reads (`sparsecc.recovery.outputs`), of which the flow sets FLOW_OPTIONS itself
FLOW_OPTIONS = frozenset({"task", "teacher"})
COMMON_OPTIONS = FLOW_OPTIONS | {"mask_padding", "pooled"}


def register_method(name: str, options: Iterable[str] = (),
                    settings: Callable[[RecoveryOptions], Any] | None = None) -> Callable[[RecoveryFn], RecoveryFn]:
    """Decorator: make ``fn`` the recovery method called ``name`` (re-registering replaces it). ``options``:
    the ``options:`` keys it reads besides `COMMON_OPTIONS`; `check_options` refuses any other.
    ``settings``: the method's parser of its option values (no program needed), raising on a bad one;
    `check_options` calls it too, so a wrong value fails before any stage runs."""
    def deco(fn: RecoveryFn) -> RecoveryFn:
        _REGISTRY[name] = fn
        _OPTIONS[name] = frozenset(options)
        _SETTINGS.pop(name, None)
        if settings is not None:
            _SETTINGS[name] = settings
        return fn
    return deco


def method_options(name: str) -> frozenset[str]:
    """Every ``options:`` key the method ``name`` reads (its own and `COMMON_OPTIONS`)."""
    get_method(name)  # registers the built-in methods; an unknown name is a UsageError
    return _OPTIONS[name] | COMMON_OPTIONS


def check_options(options: RecoveryOptions, where: str = "recovery") -> None:
    """Refuse ``options:`` keys the method does not read (naming the stage, the key and the close
    matches), then values its ``settings`` parser refuses."""
    known = method_options(options.method)
    if unknown := sorted(set(options.extra) - known):
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"{where}: option {unknown[0]!r} is not read by {options.method}{hint}; "
                         f"{options.method} reads: {', '.join(sorted(known - FLOW_OPTIONS))}")
    if (settings := _SETTINGS.get(options.method)) is not None:
        try:
            settings(options)
        except (SparseccError, ValueError, TypeError) as e:
            why = str(e).removeprefix(f"{options.method}: ").removeprefix(f"{options.method} ")
            raise UsageError(f"{where}: {why}") from e


def get_method(name: str) -> RecoveryFn:
    import sparsecc.recovery  # noqa: F401  (registers the built-in methods)

    if name not in _REGISTRY:
        raise UsageError(f"unknown recovery method {name!r}; known: {', '.join(available_methods()) or 'none'}")
    return _REGISTRY[name]


def available_methods() -> list[str]:
    import sparsecc.recovery  # noqa: F401

    return sorted(_REGISTRY)


# -- masks -------------------------------------------------------------------------------------


def masks_of(program: ExportedProgram) -> dict[str, torch.Tensor]:
    """The kept-entry mask (True = may be nonzero) of every weight that has a `MaskSpec`, by FQN.

    An unfolded program carries the mask as a constant; a folded one carries
    only zeros, so its mask is ``weight != 0`` (an entry that became exactly
    zero by chance stays zero: the safe side).
    """
    out: dict[str, torch.Tensor] = {}
    for node in program.graph.nodes:
        info = get_node_info(node) if node.op == "placeholder" else None
        if info is None or info.spec is None:
            continue
        if info.mask is not None:
            out[info.spec.fqn] = state_tensor(program, info.mask).to(torch.bool).clone()
        else:
            out[info.spec.fqn] = state_tensor(program, info.spec.fqn).detach() != 0
    return out


def _target_of(program: ExportedProgram) -> dict[str, str]:
    """FQN of each spec'd weight -> its state-dict target (the same name today; kept explicit)."""
    by_target = placeholders_by_target(program)
    out = {}
    for target, node in by_target.items():
        info = get_node_info(node)
        if info is not None and info.spec is not None:
            out[info.spec.fqn] = target
    return out


def assert_zeros_kept(program: ExportedProgram, masks: Mapping[str, torch.Tensor]) -> None:
    """Raise `VerificationError` naming every weight whose masked-out entries are not exactly zero.

    Checks the stored weight itself (not weight * mask), so a folded program passes
    only when its zeros are real.
    """
    bad = []
    targets = _target_of(program)
    for fqn, mask in masks.items():
        target = targets.get(fqn, fqn)
        try:
            w = state_tensor(program, target).detach()
        except KeyError:
            bad.append(f"{fqn}: no longer in the program")
            continue
        if tuple(w.shape) != tuple(mask.shape):
            bad.append(f"{fqn}: shape {tuple(w.shape)} != mask {tuple(mask.shape)}")
            continue
        leaked = (w[~mask.to(torch.bool)] != 0).sum().item()
        if leaked:
            bad.append(f"{fqn}: {leaked} masked entr{'y is' if leaked == 1 else 'ies are'} nonzero "
                       f"(max |w| {w[~mask.to(torch.bool)].abs().max().item():.3g})")
    if bad:
        raise VerificationError("recovery broke the sparsity pattern:\n  " + "\n  ".join(bad))


def apply_masks_(module: torch.nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the masked entries of ``module``'s parameters in place (names are the masks' FQNs)."""
    params = dict(module.named_parameters())
    with torch.no_grad():
        for fqn, mask in masks.items():
            if fqn in params:
                params[fqn].masked_fill_(~mask, 0)


def mask_gradients_(module: torch.nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the gradients of masked entries so no optimizer state builds up there."""
    params = dict(module.named_parameters())
    for fqn, mask in masks.items():
        p = params.get(fqn)
        if p is not None and p.grad is not None:
            p.grad.masked_fill_(~mask, 0)


# -- program <-> trainable module --------------------------------------------------------------


def trainable_copy(program: ExportedProgram) -> torch.nn.Module:
    """A deep copy of ``program.module()`` (which shares its tensors with the program) to train."""
    return copy.deepcopy(program.module())


def program_with_weights(program: ExportedProgram, state: Mapping[str, torch.Tensor]) -> ExportedProgram:
    """``program`` with each parameter found in ``state`` replaced (same graph); tied parameters stay tied."""
    editor = ProgramEditor(program)
    for target in list(editor.state_dict):
        if target in state and isinstance(editor.state_dict[target], torch.nn.Parameter):
            editor.set_tensor(target, state[target].detach().clone())
    by_id: dict[int, list[str]] = {}
    for target, t in program.state_dict.items():
        by_id.setdefault(id(t), []).append(target)
    for names in by_id.values():
        for other in names[1:]:
            editor.state_dict[other] = editor.state_dict[names[0]]
    return editor.finish()


def _id_tensors(batch: Batch) -> list[torch.Tensor]:
    return [t for t in tensor_leaves(batch) if not t.is_floating_point() and t.dim() >= 1]


def batch_unit(batch: Batch) -> str:
    """What `batch_tokens` counts in such a batch: ``"tok"`` (it has token ids) or ``"samples"``."""
    return "tok" if _id_tensors(batch) else "samples"


def batch_tokens(batch: Batch) -> int:
    """Real tokens in a batch (the ones of its ``attention_mask``: padding is not training text; without a
    mask the ``input_ids`` / first integer tensor's size), else samples (axis 0)."""
    kwargs = batch[1]
    ids = kwargs.get("input_ids") if isinstance(kwargs, Mapping) else None
    if isinstance(ids, torch.Tensor):
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.shape == ids.shape:
            return int((mask != 0).sum())
        return int(ids.numel())
    ints = _id_tensors(batch)
    if ints:
        return int(ints[0].numel())
    leaves = tensor_leaves(batch)
    return int(leaves[0].shape[0]) if leaves and leaves[0].dim() else 1


# -- checkpoints -------------------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any] | None:
    """The payload saved at ``path``, or None when there is none."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise RecoveryError(f"checkpoint {path} cannot be read ({e}); delete it to start over") from e


def checkpoint_path(options: RecoveryOptions, name: str) -> str | None:
    """``checkpoint_dir/NAME.pt``, or None without a ``checkpoint_dir``."""
    return str(Path(options.checkpoint_dir) / f"{name}.pt") if options.checkpoint_dir else None


def method_checkpoint(options: RecoveryOptions, name: str) -> tuple[str | None, dict[str, Any] | None]:
    """Where a method keeps its checkpoint (``checkpoint_dir/NAME.pt``) and what it holds, None if nothing:
    ``(None, None)`` without ``checkpoint_dir``; one written with other options is a `StaleCheckpointError`."""
    path = checkpoint_path(options, name)
    if path is None:
        return None, None
    ck = load_checkpoint(path)
    if ck is not None and ck.get("fingerprint") != options.fingerprint():
        raise StaleCheckpointError(f"checkpoint {path} was written with other recovery options; "
                                   "delete it or use another checkpoint_dir")
    return path, ck


def _rng_state() -> dict[str, Any]:
    import numpy as np

    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def _seed_all(seed: int) -> None:
    import numpy as np

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


class _InterruptFlag:
    """Turns SIGINT into a flag the loop checks between steps (main thread only; elsewhere a no-op)."""

    def __init__(self) -> None:
        self.hit = False
        self._old: Any = None

    def __enter__(self) -> "_InterruptFlag":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)

            def handler(signum: int, frame: Any) -> None:
                if self.hit:  # a second Ctrl-C stops at once
                    raise KeyboardInterrupt
                self.hit = True

            signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _fmt_seconds(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class TrainingLoop:
    """Seeded optimisation steps over ``n_batches`` batches, with progress, checkpoints and resume.

    ``step_fn(step, batch_index) -> (loss, tokens)`` does one step (forward, backward,
    optimizer step, re-masking). The batch order is a fresh seeded permutation each
    epoch. ``state()`` / ``load_state(d)`` add method-specific state to checkpoints
    (the module and optimizer are saved by the loop). Checkpoints live at
    ``options.checkpoint_dir / f"{name}.pt"``; when one with the same options exists,
    `run` resumes from it.
    """

    def __init__(self, options: RecoveryOptions, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 n_batches: int, *, name: str, steps: int | None = None,
                 progress: Callable[[str], None] | None = None,
                 state: Callable[[], dict[str, Any]] | None = None,
                 load_state: Callable[[dict[str, Any]], None] | None = None, unit: str = "tok") -> None:
        if n_batches < 1:
            raise RecoveryError(f"{name}: no training batches")
        self.options, self.module, self.optimizer = options, module, optimizer
        self.n_batches, self.name = n_batches, name
        self.steps = options.steps if steps is None else steps
        self.progress, self._state, self._load_state = progress, state, load_state
        self.unit = unit  # what the step function counts (`batch_unit`), for the rate in progress lines
        self.step = 0
        self.history: list[float] = []
        self.tokens = 0
        self.seconds = 0.0  # training time, summed across resumed runs
        self.resumed_from: int | None = None
        self._order: list[int] = []

    @property
    def path(self) -> str | None:
        return checkpoint_path(self.options, self.name)

    def _batch_index(self, step: int) -> int:
        epoch, pos = divmod(step, self.n_batches)
        if pos == 0 or not self._order:
            g = torch.Generator().manual_seed(self.options.seed * 1_000_003 + epoch)
            self._order = torch.randperm(self.n_batches, generator=g).tolist()
        return self._order[pos]

    def save(self) -> None:
        if self.path is None:
            return
        save_checkpoint(self.path, {
            "fingerprint": self.options.fingerprint(), "name": self.name, "step": self.step,
            "history": list(self.history), "tokens": self.tokens, "seconds": self.seconds,
            "order": list(self._order), "rng": _rng_state(),
            "module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
            "extra": self._state() if self._state is not None else None,
        })

    def _resume(self) -> None:
        _, ck = method_checkpoint(self.options, self.name)
        if ck is None:
            return
        self.module.load_state_dict(ck["module"])
        self.optimizer.load_state_dict(ck["optimizer"])
        _set_rng_state(ck["rng"])
        self.step, self.history, self.tokens = ck["step"], list(ck["history"]), ck["tokens"]
        self.seconds, self._order = ck.get("seconds", 0.0), list(ck["order"])
        if self._load_state is not None and ck.get("extra") is not None:
            self._load_state(ck["extra"])
        self.resumed_from = self.step
        self._say(f"{self.name}: resumed from {self.path} at step {self.step}/{self.steps}")

    def _say(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)

    def run(self, step_fn: Callable[[int, int], tuple[float, int]]) -> list[float]:
        """Run the remaining steps; returns the loss of every step (resumed ones included)."""
        _seed_all(self.options.seed)
        self._resume()
        t_start, done_here = time.perf_counter(), 0
        report_every = max(1, self.steps // 20)
        with _InterruptFlag() as flag:
            while self.step < self.steps:
                t0 = time.perf_counter()
                loss, tokens = step_fn(self.step, self._batch_index(self.step))
                self.seconds += time.perf_counter() - t0
                self.step += 1
                done_here += 1
                self.history.append(float(loss))
                self.tokens += int(tokens)
                if flag.hit:
                    self.save()
                    self._say(f"{self.name}: interrupted at step {self.step}; checkpoint {self.path}")
                    raise KeyboardInterrupt
                if self.path is not None and self.step % self.options.checkpoint_every == 0 and self.step < self.steps:
                    self.save()
                if self.step % report_every == 0 or self.step == self.steps:
                    elapsed = time.perf_counter() - t_start
                    rate = self.tokens / self.seconds if self.seconds else 0.0
                    left = elapsed / done_here * (self.steps - self.step)
                    self._say(f"{self.name}: step {self.step}/{self.steps} loss {loss:.4g} "
                              f"{rate:,.0f} {self.unit}/s, {_fmt_seconds(left)} left")
        if self.path is not None:
            self.save()  # finished: a rerun with the same options returns at once
        return self.history

"""The ``recovery:`` recipe section: what to train or solve after one-shot pruning.

One mapping, or a list of them run in order (reconstruct, then distill)::

    recovery:
      - method: reconstruct     # reconstruct | block-tune | distill | learned-mask | sr-ste
        samples: 64             # training batches drawn from `data`
      - method: distill
        steps: 200
        lr: 1.0e-4
        batch_size: 8
        seq_len: 128            # tokens per sample (language models)
        data: calibration       # training data (sparsecc.data); never the evaluation data
        loss: auto              # auto | kl | cosine | mse
        temperature: 2.0
        teacher: dense          # the program before sparsify (the only teacher today)
        seed: 0
        checkpoint_dir: ckpt/   # resume from here; Ctrl-C writes a checkpoint
        checkpoint_every: 50
        options: {damp: 0.01}   # method-specific keys (each method's module; others are refused)

`parse_recovery` turns it into `RecoveryOptions` (one per entry), with errors
that name the key, e.g. ``recipe key 'recovery[1].lr': -1 must be a positive number``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from sparsecc.errors import UsageError

__all__ = ["RecoveryOptions", "RecoveryRecipeError", "RECOVERY_KEYS", "KNOWN_METHODS", "parse_recovery", "recovery_to_dicts"]

KNOWN_METHODS = ("reconstruct", "block-tune", "distill", "learned-mask", "sr-ste")
LOSSES = ("auto", "kl", "cosine", "mse")
TEACHERS = ("dense",)


@dataclass(frozen=True)
class RecoveryOptions:
    method: str  # "reconstruct" | "block-tune" | "distill" | "learned-mask" | "sr-ste"
    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 8
    seq_len: int | None = None
    data: str = "calibration"  # which training data (see sparsecc.data); never evaluation data
    samples: int = 64
    loss: str = "auto"  # auto | kl | cosine | mse
    temperature: float = 2.0
    seed: int = 0
    checkpoint_dir: str | None = None  # resume from here if it holds a checkpoint
    checkpoint_every: int = 50
    extra: Mapping[str, Any] = field(default_factory=dict)  # method-specific keys

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "samples", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "steps" else 1):
                raise UsageError(f"recovery option {name!r} must be a positive integer, got {value!r}")
        if isinstance(self.lr, bool) or not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise UsageError(f"recovery option 'lr' must be a positive number, got {self.lr!r}")
        if self.loss not in LOSSES:
            raise UsageError(f"recovery option 'loss' must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.seq_len is not None and (not isinstance(self.seq_len, int) or self.seq_len < 2):
            raise UsageError(f"recovery option 'seq_len' must be an integer >= 2, got {self.seq_len!r}")
        if isinstance(self.temperature, bool) or not (isinstance(self.temperature, (int, float))
                                                      and self.temperature > 0):
            raise UsageError(f"recovery option 'temperature' must be a positive number, got {self.temperature!r}")

    def number(self, key: str, default: float, kind: type = float) -> Any:
        """``extra[key]`` (else ``default``) as a ``kind`` (float or int); UsageError naming the key if it is not
        one (a string that reads as a number passes: YAML reads ``1e-4`` as one)."""
        value = self.extra.get(key, default)
        try:
            if isinstance(value, bool):
                raise TypeError
            out = float(value)
            if kind is int:
                if out != int(out):
                    raise ValueError
                out = int(out)
        except (TypeError, ValueError, OverflowError):
            what = "an integer" if kind is int else "a number"
            raise UsageError(f"option {key!r} must be {what}, got {value!r}") from None
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["extra"] = dict(self.extra)
        return d

    def fingerprint(self) -> str:
        """What must match for a checkpoint to resume (all but where checkpoints go and how often)."""
        d = self.to_dict()
        d.pop("checkpoint_dir")
        d.pop("checkpoint_every")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# recipe key -> (check, message); "options" and "teacher" are handled apart
RECOVERY_KEYS: dict[str, tuple[Any, str]] = {
    "method": (lambda v: v in KNOWN_METHODS, f"is not a recovery method; known: {', '.join(KNOWN_METHODS)}"),
    "steps": (lambda v: _int(v) and v >= 0, "must be a non-negative integer"),
    "lr": (lambda v: _num(v) and v > 0, "must be a positive number"),
    "batch_size": (lambda v: _int(v) and v >= 1, "must be a positive integer"),
    "seq_len": (lambda v: v is None or (_int(v) and v >= 2), "must be an integer >= 2"),
    "data": (lambda v: isinstance(v, str) and v != "", "must be the name of a training data source"),
    "samples": (lambda v: _int(v) and v >= 1, "must be a positive integer"),
    "loss": (lambda v: v in LOSSES, f"must be one of {', '.join(LOSSES)}"),
    "temperature": (lambda v: _num(v) and v > 0, "must be a positive number"),
    "seed": (lambda v: _int(v) and v >= 0, "must be a non-negative integer"),
    "checkpoint_dir": (lambda v: v is None or (isinstance(v, str) and v != ""), "must be a folder path"),
    "checkpoint_every": (lambda v: _int(v) and v >= 1, "must be a positive integer"),
}


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class RecoveryRecipeError(UsageError, ValueError):
    """A ``recovery:`` entry is invalid; worded like `RecipeError` (``key`` is the dotted path)."""

    def __init__(self, key: str, value: Any, message: str):
        super().__init__(f"recipe key '{key}': {value!r} {message}")
        self.key, self.value = key, value


def _error(key: str, value: Any, message: str) -> Exception:
    return RecoveryRecipeError(key, value, message)


def _one(entry: Any, where: str) -> RecoveryOptions:
    if isinstance(entry, str):  # `recovery: reconstruct` is short for {method: reconstruct}
        entry = {"method": entry}
    if not isinstance(entry, Mapping):
        raise _error(where, entry, "must be a mapping with at least 'method'")
    allowed = set(RECOVERY_KEYS) | {"options", "teacher"}
    for k in entry:
        if k not in allowed:
            raise _error(f"{where}.{k}", entry[k], f"is not a known key; known: {', '.join(sorted(allowed))} "
                                                   "(method-specific keys go under 'options')")
    if "method" not in entry:
        raise _error(f"{where}.method", None, f"is required ({', '.join(KNOWN_METHODS)})")
    for k, (ok, message) in RECOVERY_KEYS.items():
        if k in entry and not ok(entry[k]):
            raise _error(f"{where}.{k}", entry[k], message)
    extra = entry.get("options") or {}
    if not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra):
        raise _error(f"{where}.options", extra, "must be a mapping of method-specific keys")
    extra = dict(extra)
    teacher = entry.get("teacher", "dense")
    if teacher not in TEACHERS:
        raise _error(f"{where}.teacher", teacher, f"is not a known teacher; known: {', '.join(TEACHERS)}")
    extra["teacher"] = teacher
    fields = {k: (float(v) if k in ("lr", "temperature") else v) for k, v in entry.items() if k in RECOVERY_KEYS}
    return RecoveryOptions(**fields, extra=extra)


def parse_recovery(section: Any, where: str = "recovery") -> tuple[RecoveryOptions, ...]:
    """The ``recovery:`` section as `RecoveryOptions`, in the order they run; () for none."""
    if section is None:
        return ()
    if isinstance(section, (list, tuple)):
        if not section:
            raise _error(where, section, "is an empty list; leave the key out for no recovery")
        return tuple(_one(e, f"{where}[{i}]") for i, e in enumerate(section))
    return (_one(section, where),)


def recovery_to_dicts(options: tuple[RecoveryOptions, ...]) -> list[dict[str, Any]]:
    """The section back as recipe YAML would write it (defaults left out)."""
    default = RecoveryOptions("distill")
    out = []
    for o in options:
        d: dict[str, Any] = {"method": o.method}
        for k in RECOVERY_KEYS:
            if k != "method" and getattr(o, k) != getattr(default, k):
                d[k] = getattr(o, k)
        extra = dict(o.extra)
        if extra.pop("teacher", "dense") != "dense":
            d["teacher"] = o.extra["teacher"]
        if extra:
            d["options"] = extra
        out.append(d)
    return out

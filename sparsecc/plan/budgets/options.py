"""The budget options: `Budget`, its recipe form and `parse_budget`, and what each method needs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sparsecc.errors import UsageError
from sparsecc.plan.criteria import CRITERIA, criterion_info
from sparsecc.plan.criteria import needs_calibration as criterion_needs
from sparsecc.plan.recipe_error import RecipeError

__all__ = ["BUDGET_METHODS", "Budget", "BudgetError", "parse_budget", "needs_stats", "needs_calibration", "needs_program"]

BUDGET_METHODS = ("uniform", "global", "erk", "owl", "ecoflap", "sensitivity")


class BudgetError(UsageError, ValueError):
    """A budget cannot be met (target beyond the caps, missing inputs)."""


@dataclass(frozen=True)
class Budget:
    """A layer-wise budget: the method and its options.

    Options apply to some methods only (`parse_budget` rejects the others):

    - ``max_sparsity`` / ``min_sparsity`` (all): bounds on every re-allocated
      layer. ``max_sparsity`` defaults to 1.0, except ``global`` (0.95) and
      ``ecoflap`` (target + 0.1, as in its paper's runs).
    - ``scores`` (global, owl, sensitivity): criterion that scores entries;
      defaults: magnitude (global, sensitivity), wanda (owl).
    - ``normalize`` (global): ``none`` or ``rms``.
    - ``power`` (erk): exponent on the ERK coefficient (1 is ERK).
    - ``outlier_m``, ``lam`` (owl; recipe keys ``m`` and ``lambda``).
    - ``granularity`` (owl, ecoflap): ``block`` (default: the weights under
      one numbered module, e.g. ``model.layers.3``, share a sparsity) or ``layer``.
    - ``eps``, ``samples``, ``aggregate`` (ecoflap): perturbation size, random
      directions per block, ``sum`` (score as estimated) or ``mean`` (per parameter).
    - ``levels``, ``table`` (sensitivity): sparsities of the sweep; a JSON
      table written by ``sparsecc sensitivity`` to use instead of sweeping.
    - ``max_batches`` (ecoflap, sensitivity): calibration batches per loss.
    - ``seed`` (ecoflap): random directions.
    """

    method: str = "uniform"
    max_sparsity: float | None = None
    min_sparsity: float = 0.0
    scores: str | None = None
    normalize: str = "none"
    power: float = 1.0
    outlier_m: float = 5.0
    lam: float = 0.08
    granularity: str = "block"
    eps: float = 1e-3
    samples: int = 1
    aggregate: str = "sum"
    levels: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9)
    table: str | None = None
    max_batches: int | None = None
    seed: int = 0

    def cap(self, target: float) -> float:
        """The largest sparsity a layer may get."""
        if self.max_sparsity is not None:
            return self.max_sparsity
        if self.method == "global":
            return 0.95
        if self.method == "ecoflap":
            return min(1.0, target + 0.1)
        return 1.0

    @property
    def score_criterion(self) -> str:
        return self.scores or ("wanda" if self.method == "owl" else "magnitude")

    def to_dict(self) -> dict[str, Any]:
        """Recipe form: the method and the options that differ from their defaults."""
        d: dict[str, Any] = {"method": self.method}
        default = Budget(self.method)
        for key, fname in _KEY_TO_FIELD.items():
            value = getattr(self, fname)
            if self.method in _OPTION_METHODS[key] and value != getattr(default, fname):
                d[key] = list(value) if isinstance(value, tuple) else value
        return d


# recipe key -> Budget field, and the methods each option applies to.
_KEY_TO_FIELD = {
    "max_sparsity": "max_sparsity", "min_sparsity": "min_sparsity", "scores": "scores",
    "normalize": "normalize", "power": "power", "m": "outlier_m", "lambda": "lam",
    "granularity": "granularity", "eps": "eps", "samples": "samples", "aggregate": "aggregate",
    "levels": "levels", "table": "table", "max_batches": "max_batches", "seed": "seed",
}
_ALL = frozenset(BUDGET_METHODS)
_OPTION_METHODS: dict[str, frozenset[str]] = {
    "max_sparsity": _ALL, "min_sparsity": _ALL,
    "scores": frozenset({"global", "owl", "sensitivity"}),
    "normalize": frozenset({"global"}),
    "power": frozenset({"erk"}),
    "m": frozenset({"owl"}), "lambda": frozenset({"owl"}),
    "granularity": frozenset({"owl", "ecoflap"}),
    "eps": frozenset({"ecoflap"}), "samples": frozenset({"ecoflap"}), "aggregate": frozenset({"ecoflap"}),
    "levels": frozenset({"sensitivity"}), "table": frozenset({"sensitivity"}),
    "max_batches": frozenset({"ecoflap", "sensitivity"}),
    "seed": frozenset({"ecoflap"}),
}


def parse_budget(value: Any, key: str = "budget") -> Budget:
    """A `Budget` from a recipe value: a method name or ``{method: ..., option: ...}``.

    Raises `sparsecc.plan.recipe.RecipeError` naming the key and the value at fault.
    """
    if isinstance(value, Budget):
        return value
    if value is None:  # an empty `budget:` in YAML
        return Budget()
    if isinstance(value, str):
        value = {"method": value}
    if not isinstance(value, dict):
        raise RecipeError(key, value, f"must be a method name ({', '.join(BUDGET_METHODS)}) or a mapping")
    method = value.get("method")
    if method not in BUDGET_METHODS:
        raise RecipeError(f"{key}.method", method, f"is not a known budget method; known: {', '.join(BUDGET_METHODS)}")
    fields: dict[str, Any] = {"method": method}
    for k, v in value.items():
        if k == "method":
            continue
        if k not in _KEY_TO_FIELD:
            raise RecipeError(f"{key}.{k}", v, f"is not a known key; known: method, {', '.join(sorted(_KEY_TO_FIELD))}")
        if method not in _OPTION_METHODS[k]:
            own = sorted(o for o, ms in _OPTION_METHODS.items() if method in ms)
            raise RecipeError(f"{key}.{k}", v, f"does not apply to budget method {method!r}; its options: {', '.join(own)}")
        fields[_KEY_TO_FIELD[k]] = _check_option(k, v, f"{key}.{k}", RecipeError)
    budget = Budget(**fields)
    if budget.max_sparsity is not None and budget.min_sparsity > budget.max_sparsity:
        raise RecipeError(f"{key}.min_sparsity", budget.min_sparsity, f"is above {key}.max_sparsity={budget.max_sparsity}")
    return budget


def _check_option(k: str, v: Any, key: str, err: type) -> Any:
    def number(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise err(key, v, "must be a number")
        if (v < lo or (lo_open and v == lo)) or (v > hi or (hi_open and v == hi)):
            raise err(key, v, f"is outside {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")
        return float(v)

    def integer(lo: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise err(key, v, f"must be an integer >= {lo}")
        return v

    if k == "max_sparsity":
        return number(0.0, 1.0, lo_open=True)
    if k == "min_sparsity":
        return number(0.0, 1.0, hi_open=True)
    if k == "scores":
        known = sorted(c for c in CRITERIA if criterion_info(c).kind == "score")
        if v not in known:
            raise err(key, v, f"is not a criterion that scores entries; known: {', '.join(known)}")
        return str(v)
    if k in ("normalize", "granularity", "aggregate"):
        allowed = {"normalize": ("none", "rms"), "granularity": ("block", "layer"), "aggregate": ("sum", "mean")}[k]
        if v not in allowed:
            raise err(key, v, f"must be one of: {', '.join(allowed)}")
        return v
    if k == "power":
        return number(0.0, 10.0)
    if k == "m":
        return number(0.0, math.inf, lo_open=True)
    if k == "lambda":
        return number(0.0, 1.0)
    if k == "eps":
        return number(0.0, 1.0, lo_open=True)
    if k in ("samples", "max_batches"):
        return integer(1)
    if k == "seed":
        return integer(0)
    if k == "levels":
        if not isinstance(v, (list, tuple)) or not v:
            raise err(key, v, "must be a non-empty list of sparsities in (0, 1]")
        levels = tuple(sorted(set(_check_option("max_sparsity", x, key, err) for x in v)))
        return levels
    if k == "table":
        if not isinstance(v, str) or not v:
            raise err(key, v, "must be the path of a sensitivity table (JSON)")
        return v
    raise AssertionError(k)


def needs_stats(budget: Budget) -> frozenset[str]:
    """The calibration statistics `allocate` needs for ``budget`` (``act_sq`` for OWL); empty: none."""
    if budget.method in ("global", "owl") or (budget.method == "sensitivity" and budget.table is None):
        return criterion_needs(budget.score_criterion)
    return frozenset()


def needs_calibration(budget: Budget) -> bool:
    """Whether `allocate` runs the calibration loss (``calibration`` data and the program)."""
    return budget.method == "ecoflap" or (budget.method == "sensitivity" and budget.table is None)


def needs_program(budget: Budget) -> bool:
    """Whether `allocate` reads the weights (``program``)."""
    return budget.method in ("global", "owl") or needs_calibration(budget)

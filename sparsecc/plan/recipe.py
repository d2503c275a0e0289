"""Recipes: what to prune, how much, with which criterion; validated, then planned.

A recipe is a YAML file (or a dict) like::

    pattern: "2:4"            # unstructured | channel | N:M | RxC (a block) | none (only run-time sparsity)
    sparsity: 0.5             # fraction of zeros; implied by N:M
    criterion: magnitude      # see sparsecc.criteria
    layers:
      include: ["*"]          # globs, or "re:<regex>", on layer name or weight FQN
      exclude: ["lm_head"]
      min_params: 1024        # smaller weights are left dense
      skip_first: 0           # leave the first / last N layers (execution order) dense
      skip_last: 0
      include_tied: false     # weights also used by non-matmul ops (tied embeddings)
      include_embeddings: false  # embedding tables (lookups: size, not compute)
    incompatible: skip        # skip | error: a layer the pattern does not fit
    calibration:              # for wanda / sparsegpt / taylor (see sparsecc.calibrate)
      samples: 64             # calibration batches drawn from the model's calibration data
      seq_len: 256            # tokens per batch (language models)
      sequential: true        # prune block by block on the pruned blocks' outputs
    criterion_options:        # passed to the criterion (SparseGPT: blocksize, damp)
      damp: 0.01
    budget: uniform           # how `sparsity` is spread over layers (sparsecc.budgets):
                              # uniform | global | erk | owl | ecoflap | sensitivity,
                              # or {method: owl, lambda: 0.08, max_sparsity: 0.9, ...}
    quantize:                 # int8 weights on the pattern (sparsecc.plan.quantize_options)
      weights: int8
      activations: dynamic    # dynamic | static
    activations:              # zero small linear inputs at run time (sparsecc.plan.runtime_sparsity_options)
      sparsity: 0.4
    attention:                # skip attention blocks of negligible mass (same module)
      tau: 0.95
    overrides:                # first match wins; any key above, or `skip: true`
      - match: "encoder.layer.0.*"
        sparsity: 0.3

`load_recipe` checks the schema and values; `plan_masks` checks the recipe
against a program's prunable weights and returns one `MaskSpec` per weight it
prunes, and the reason for every weight it leaves dense. Errors are
`RecipeError`s that name the key and the value at fault.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sparsecc.core.analyze import Analysis, PrunableWeight
from sparsecc.plan.budgets import Budget, parse_budget
from sparsecc.plan.criteria import CRITERIA
from sparsecc.core.ir import MaskSpec, SparsityPattern
from sparsecc.plan.masks import incompatibility
from sparsecc.plan.recovery_options import RecoveryOptions, parse_recovery, recovery_to_dicts
from sparsecc.plan.structured_options import StructuredOptions, parse_structured
from sparsecc.plan.quantize_options import QuantizeOptions, parse_quantize
from sparsecc.plan.runtime_sparsity_options import (
    ActivationOptions, AttentionOptions, parse_activations, parse_attention,
)
from sparsecc.plan.recipe_error import RecipeError
from sparsecc.errors import UsageError

__all__ = [
    "RecipeError",
    "RecipeFileError",
    "LayerSelection",
    "Override",
    "Recipe",
    "CalibrationOptions",
    "Plan",
    "load_recipe",
    "plan_masks",
]


class RecipeFileError(UsageError, FileNotFoundError):
    """A recipe file that is missing or not text; the message names the file."""


@dataclass(frozen=True)
class LayerSelection:
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    min_params: int = 0
    skip_first: int = 0
    skip_last: int = 0
    include_tied: bool = False
    include_embeddings: bool = False


@dataclass(frozen=True)
class Override:
    match: tuple[str, ...]
    pattern: SparsityPattern | None = None
    sparsity: float | None = None
    criterion: str | None = None
    skip: bool = False


@dataclass(frozen=True)
class CalibrationOptions:
    samples: int = 64
    seq_len: int | None = None
    sequential: bool = True


@dataclass(frozen=True)
class Recipe:
    pattern: SparsityPattern = SparsityPattern("unstructured")
    sparsity: float = 0.5
    criterion: str = "magnitude"
    layers: LayerSelection = LayerSelection()
    incompatible: str = "skip"
    overrides: tuple[Override, ...] = ()
    calibration: CalibrationOptions = CalibrationOptions()
    criterion_options: tuple[tuple[str, Any], ...] = ()
    budget: Budget = Budget()
    structured: StructuredOptions | None = None  # channel / head removal (sparsecc.structured)
    quantize: QuantizeOptions | None = None  # int8 weights kept on the pattern (plan.quantize_options)
    recovery: tuple[RecoveryOptions, ...] = ()  # what runs after pruning (sparsecc.plan.recovery_options)
    activations: ActivationOptions | None = None  # run-time activation sparsity (plan.runtime_sparsity_options)
    attention: AttentionOptions | None = None  # block-sparse attention (plan.runtime_sparsity_options)
    weights_pruned: bool = True  # False: a recipe of run-time sparsity only (no pattern given)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "pattern": str(self.pattern),
            "sparsity": self.sparsity,
            "criterion": self.criterion,
            "layers": {
                "include": list(self.layers.include),
                "exclude": list(self.layers.exclude),
                "min_params": self.layers.min_params,
                "skip_first": self.layers.skip_first,
                "skip_last": self.layers.skip_last,
                "include_tied": self.layers.include_tied,
                "include_embeddings": self.layers.include_embeddings,
            },
            "incompatible": self.incompatible,
        }
        if self.calibration != CalibrationOptions():
            d["calibration"] = {k: v for k, v in vars(self.calibration).items() if v is not None}
        if self.criterion_options:
            d["criterion_options"] = dict(self.criterion_options)
        if self.budget != Budget():
            d["budget"] = self.budget.to_dict()
        if self.structured is not None:
            d["structured"] = self.structured.to_dict()
        if self.quantize is not None:
            d["quantize"] = self.quantize.to_dict()
        if self.recovery:
            d["recovery"] = recovery_to_dicts(self.recovery)
        if self.activations is not None:
            d["activations"] = self.activations.to_dict()
        if self.attention is not None:
            d["attention"] = self.attention.to_dict()
        if not self.weights_pruned:
            for k in ("sparsity", "criterion", "layers", "incompatible"):
                d.pop(k)
            d["pattern"] = "none"
        if self.overrides:
            d["overrides"] = [
                {k: v for k, v in {
                    "match": list(o.match),
                    "pattern": str(o.pattern) if o.pattern else None,
                    "sparsity": o.sparsity,
                    "criterion": o.criterion,
                    "skip": o.skip or None,
                }.items() if v is not None}
                for o in self.overrides
            ]
        return d


# -- parsing ------------------------------------------------------------------


class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.1 reads an unquoted ``2:4`` as the base-60 integer 124; recipes mean N:M."""


_RecipeLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:int"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)

_TOP_KEYS = {"pattern", "sparsity", "criterion", "layers", "incompatible", "overrides", "calibration",
             "criterion_options", "budget", "structured", "recovery", "quantize", "activations", "attention"}
_CALIBRATION_KEYS = {"samples", "seq_len", "sequential"}
# criterion option -> (type, check, message)
_CRITERION_OPTIONS = {
    "blocksize": (int, lambda v: v >= 1, "must be a positive integer"),
    "damp": (float, lambda v: 0 < v < 10, "must be a number in (0, 10)"),
}
_LAYER_KEYS = {"include", "exclude", "min_params", "skip_first", "skip_last", "include_tied", "include_embeddings"}
_OVERRIDE_KEYS = {"match", "pattern", "sparsity", "criterion", "skip"}


def _check_keys(d: Any, allowed: set[str], where: str) -> None:
    if not isinstance(d, dict):
        raise RecipeError(where or "<root>", d, "must be a mapping")
    for k in d:
        if k not in allowed:
            prefix = f"{where}." if where else ""
            raise RecipeError(prefix + str(k), d[k], f"is not a known key; known: {', '.join(sorted(allowed))}")


def _pattern(value: Any, key: str) -> SparsityPattern:
    try:
        return SparsityPattern.parse(value)
    except ValueError as e:
        raise RecipeError(key, value, f"is not a valid pattern: {e}") from None


def _sparsity(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecipeError(key, value, "must be a number in [0, 1)")
    if not 0.0 <= float(value) < 1.0:
        raise RecipeError(key, value, "is outside [0, 1)")
    return float(value)


def _criterion(value: Any, key: str) -> str:
    if value not in CRITERIA:
        raise RecipeError(key, value, f"is not a known criterion; known: {', '.join(sorted(CRITERIA))}")
    return str(value)


def _patterns_list(value: Any, key: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
        raise RecipeError(key, value, "must be a string or a list of strings")
    for x in items:
        if x.startswith("re:"):
            try:
                re.compile(x[3:])
            except re.error as e:
                raise RecipeError(key, x, f"is not a valid regex: {e}") from None
    return tuple(items)


def _nonneg_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RecipeError(key, value, "must be a non-negative integer")
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise RecipeError(key, value, "must be true or false")
    return value


def _resolve_sparsity(pattern: SparsityPattern, sparsity: Any, key: str, default: float | None) -> float:
    fixed = pattern.fixed_sparsity
    if sparsity is None:
        if fixed is not None:
            return fixed
        if default is None:
            raise RecipeError(key, None, f"is required for pattern {pattern}")
        return default
    s = _sparsity(sparsity, key)
    if fixed is not None and abs(s - fixed) > 1e-9:
        raise RecipeError(key, sparsity, f"contradicts pattern {pattern}, whose sparsity is {fixed:g}")
    return s


def recipe_from_dict(d: dict[str, Any]) -> Recipe:
    _check_keys(d, _TOP_KEYS, "")
    if "structured" in d:  # a structured recipe removes whole channels / heads
        ratio = d["structured"].get("ratio", 0.5) if isinstance(d["structured"], dict) else 0.5
        d = {"pattern": "channel", "sparsity": ratio if isinstance(ratio, (int, float)) and 0 <= ratio < 1 else 0.5, **d}
    runtime_only = d.get("pattern", "none") == "none" and ("activations" in d or "attention" in d)
    if d.get("pattern") == "none" and not runtime_only:
        raise RecipeError("pattern", "none", "prunes no weights: give an activations or attention section")
    if runtime_only:  # zeros found at run time only: the weights stay dense
        weight_keys = sorted(set(d) - {"pattern", "activations", "attention", "calibration"})
        if weight_keys:
            raise RecipeError("pattern", None, f"is required with {', '.join(weight_keys)} (keys about the weights)")
        d = {**d, "pattern": "unstructured", "sparsity": 0.0}
    if "pattern" not in d:
        raise RecipeError("pattern", None, "is required (unstructured, channel, N:M or RxC)")
    pattern = _pattern(d["pattern"], "pattern")
    sparsity = _resolve_sparsity(pattern, d.get("sparsity"), "sparsity", None)
    criterion = _criterion(d.get("criterion", "magnitude"), "criterion")

    lay = d.get("layers") or {}
    _check_keys(lay, _LAYER_KEYS, "layers")
    layers = LayerSelection(
        include=_patterns_list(lay.get("include", ["*"]), "layers.include"),
        exclude=_patterns_list(lay.get("exclude", []), "layers.exclude"),
        min_params=_nonneg_int(lay.get("min_params", 0), "layers.min_params"),
        skip_first=_nonneg_int(lay.get("skip_first", 0), "layers.skip_first"),
        skip_last=_nonneg_int(lay.get("skip_last", 0), "layers.skip_last"),
        include_tied=_bool(lay.get("include_tied", False), "layers.include_tied"),
        include_embeddings=_bool(lay.get("include_embeddings", False), "layers.include_embeddings"),
    )
    incompatible = d.get("incompatible", "skip")
    if incompatible not in ("skip", "error"):
        raise RecipeError("incompatible", incompatible, "must be 'skip' or 'error'")

    overrides = []
    raw = d.get("overrides") or []
    if not isinstance(raw, list):
        raise RecipeError("overrides", raw, "must be a list")
    for i, o in enumerate(raw):
        key = f"overrides[{i}]"
        _check_keys(o, _OVERRIDE_KEYS, key)
        if "match" not in o:
            raise RecipeError(f"{key}.match", None, "is required")
        o_pattern = _pattern(o["pattern"], f"{key}.pattern") if "pattern" in o else None
        o_sparsity = None
        if "sparsity" in o:
            o_sparsity = _resolve_sparsity(o_pattern or pattern, o["sparsity"], f"{key}.sparsity", None)
        overrides.append(
            Override(
                match=_patterns_list(o["match"], f"{key}.match"),
                pattern=o_pattern,
                sparsity=o_sparsity,
                criterion=_criterion(o["criterion"], f"{key}.criterion") if "criterion" in o else None,
                skip=_bool(o.get("skip", False), f"{key}.skip"),
            )
        )
    cal = d.get("calibration") or {}
    _check_keys(cal, _CALIBRATION_KEYS, "calibration")
    samples = _nonneg_int(cal.get("samples", 64), "calibration.samples")
    if samples < 1:
        raise RecipeError("calibration.samples", samples, "must be at least 1")
    seq_len = cal.get("seq_len")
    if seq_len is not None and (_nonneg_int(seq_len, "calibration.seq_len") < 2):
        raise RecipeError("calibration.seq_len", seq_len, "must be at least 2")
    calibration = CalibrationOptions(samples, seq_len, _bool(cal.get("sequential", True), "calibration.sequential"))

    opts = d.get("criterion_options") or {}
    _check_keys(opts, set(_CRITERION_OPTIONS), "criterion_options")
    for k, v in opts.items():
        typ, ok, msg = _CRITERION_OPTIONS[k]
        good_type = isinstance(v, int) if typ is int else isinstance(v, (int, float))
        if isinstance(v, bool) or not good_type or not ok(v):
            raise RecipeError(f"criterion_options.{k}", v, msg)
    return Recipe(pattern, sparsity, criterion, layers, incompatible, tuple(overrides), calibration,
                  tuple(sorted(opts.items())), budget=parse_budget(d.get("budget", "uniform"), "budget"),
                  structured=parse_structured(d["structured"], RecipeError) if "structured" in d else None,
                  recovery=parse_recovery(d.get("recovery")),
                  quantize=parse_quantize(d["quantize"], RecipeError) if d.get("quantize") is not None else None,
                  activations=parse_activations(d["activations"], RecipeError) if "activations" in d else None,
                  attention=parse_attention(d["attention"], RecipeError) if "attention" in d else None,
                  weights_pruned=not runtime_only)


def load_recipe(source: str | os.PathLike | dict[str, Any] | Recipe) -> Recipe:
    """A `Recipe` from a YAML file path, a YAML string, a dict, or a Recipe."""
    if isinstance(source, Recipe):
        return source
    if isinstance(source, dict):
        return recipe_from_dict(source)
    text = str(source)
    path = Path(text)
    if "\n" not in text and (path.suffix in (".yaml", ".yml", ".json") or path.exists()):
        if not path.is_file():
            raise RecipeFileError(f"recipe file not found: {path}")
        try:
            text = path.read_text()
        except UnicodeDecodeError as e:
            raise RecipeFileError(f"recipe {path} is not a text YAML file (byte {e.start} is not UTF-8)") from None
    try:
        data = yaml.load(text, Loader=_RecipeLoader)
    except yaml.YAMLError as e:
        raise RecipeError("<root>", str(source)[:60], f"is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise RecipeError("<root>", data, "must be a mapping of recipe keys")
    return recipe_from_dict(data)


# -- planning -------------------------------------------------------------------


def _matches(selectors: tuple[str, ...], w: PrunableWeight) -> bool:
    for sel in selectors:
        for name in (w.layer, w.fqn):
            if sel.startswith("re:"):
                if re.fullmatch(sel[3:], name):
                    return True
            elif fnmatch.fnmatchcase(name, sel):
                return True
    return False


@dataclass
class Plan:
    """One `MaskSpec` per weight to prune; a reason per weight left dense."""

    specs: list[MaskSpec] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    # Weights whose sparsity an override sets: budgets leave them as they are.
    fixed: set[str] = field(default_factory=set)


def plan_masks(recipe: Recipe, analysis: Analysis) -> Plan:
    """Apply ``recipe`` to the prunable weights in ``analysis``."""
    weights = analysis.weights
    if not weights:
        raise RecipeError("layers", None, "cannot apply: the program has no prunable layer")
    sel = recipe.layers
    for key, sels in (("layers.include", sel.include), ("layers.exclude", sel.exclude)):
        for s in sels:
            if not any(_matches((s,), w) for w in weights):
                raise RecipeError(key, s, f"matches no prunable layer; layers are: {_some(weights)}")
    for i, o in enumerate(recipe.overrides):
        for s in o.match:
            if not any(_matches((s,), w) for w in weights):
                raise RecipeError(f"overrides[{i}].match", s, f"matches no prunable layer; layers are: {_some(weights)}")

    plan = Plan()
    n = len(weights)
    for idx, w in enumerate(weights):
        # `layers` decides which weights are pruned; overrides only change how.
        reason = _not_selected(sel, w, idx, n)
        if reason:
            plan.skipped[w.fqn] = reason
            continue
        override = next((o for o in recipe.overrides if _matches(o.match, w)), None)
        if override is not None and override.skip:
            i = recipe.overrides.index(override)
            plan.skipped[w.fqn] = f"skipped by overrides[{i}]"
            continue
        pattern = (override.pattern if override else None) or recipe.pattern
        sparsity = override.sparsity if override and override.sparsity is not None else None
        if sparsity is None:
            sparsity = pattern.fixed_sparsity if pattern.fixed_sparsity is not None else recipe.sparsity
        criterion = (override.criterion if override else None) or recipe.criterion
        why = incompatibility(w.shape, pattern, w.output_axis, w.reduction_axis)
        if why:
            if recipe.incompatible == "error" or (override and override.pattern is not None):
                key = f"overrides[{recipe.overrides.index(override)}].pattern" if override and override.pattern else "pattern"
                raise RecipeError(key, str(pattern), f"does not fit layer {w.layer} ({w.fqn} {list(w.shape)}): {why}")
            plan.skipped[w.fqn] = f"pattern {pattern} does not fit: {why}"
            continue
        plan.specs.append(MaskSpec(w.fqn, pattern, sparsity, criterion=criterion, layer=w.layer))
        if override is not None and override.sparsity is not None:
            plan.fixed.add(w.fqn)
    if not plan.specs:
        raise RecipeError(
            "pattern", str(recipe.pattern),
            "selects no layer: " + "; ".join(f"{k}: {v}" for k, v in list(plan.skipped.items())[:5]),
        )
    return plan


def _not_selected(sel: LayerSelection, w: PrunableWeight, idx: int, n: int) -> str | None:
    if not _matches(sel.include, w):
        return "not matched by layers.include"
    if sel.exclude and _matches(sel.exclude, w):
        return "matched by layers.exclude"
    if w.numel < sel.min_params:
        return f"{w.numel} params < layers.min_params={sel.min_params}"
    if idx < sel.skip_first:
        return f"among the first {sel.skip_first} layers (layers.skip_first)"
    if idx >= n - sel.skip_last:
        return f"among the last {sel.skip_last} layers (layers.skip_last)"
    if w.role == "embedding" and not sel.include_embeddings:
        return "embedding table (set layers.include_embeddings to prune)"
    if w.tied and not sel.include_tied:
        return f"tied: also used by {', '.join(w.tied_uses)} (set layers.include_tied to prune)"
    return None


def _some(weights: list[PrunableWeight], k: int = 6) -> str:
    names = [w.layer for w in weights[:k]]
    return ", ".join(names) + (f", ... ({len(weights)} in all)" if len(weights) > k else "")


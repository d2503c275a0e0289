"""The ``activations:`` and ``attention:`` recipe sections: zeros found at run time, not in the weights.

::

    activations:              # training-free activation sparsity (sparsecc.plan.activation_sparsity)
      sparsity: 0.4           # share of each chosen linear layer's inputs zeroed by a magnitude threshold
      allocation: uniform     # uniform (every layer the same) | greedy (sparsecc.plan.activation_budget)
      layers: ["*"]           # globs on the weight name
      exclude: null           # globs; null leaves out the last linear layer (an LM head, a classifier)
      exact: false            # also skip ReLU's exact zeros on torch-sparse (bitwise equal to dense)
    attention:                # block-sparse attention (sparsecc.passes.BlockSparseAttentionPass)
      block: 64               # tokens per query / key block (a multiple of 8 in [8, 512])
      tau: 0.95               # kept share of each query block's pooled attention mass
      sink: false             # always keep the first key block (decoders such as SmolLM2 need it)
      reuse: 0                # recompute a call site's block mask every N calls (0: every call)
      include: ["*"]          # globs on the attention's module path (model.layers.3.self_attn)
      exclude: []

``activations: {exact: true}`` with ``sparsity: 0`` calibrates nothing: a
ReLU model's zeros are skipped as they are. A positive ``sparsity`` calibrates
thresholds on the recipe's calibration data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

from sparsecc.kernels.attention import check_block

__all__ = ["ActivationOptions", "AttentionOptions", "ALLOCATIONS", "parse_activations", "parse_attention"]

ALLOCATIONS = ("uniform", "greedy")
_ACTIVATION_KEYS = {"sparsity", "allocation", "layers", "exclude", "exact"}
_ATTENTION_KEYS = {"block", "tau", "sink", "reuse", "include", "exclude"}

Fail = Callable[[str, Any, str], Exception]  # the recipe's error: (key, value, message)


@dataclass(frozen=True)
class ActivationOptions:
    sparsity: float = 0.0
    allocation: str = "uniform"
    layers: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] | None = None
    exact: bool = False

    @property
    def needs_calibration(self) -> bool:
        return self.sparsity > 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers)
        d["exclude"] = None if self.exclude is None else list(self.exclude)
        return d


@dataclass(frozen=True)
class AttentionOptions:
    block: int = 64
    tau: float = 0.95
    sink: bool = False
    reuse: int = 0
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        return d


def _globs(value: Any, key: str, fail: Fail) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise fail(key, value, "must be a glob or a list of globs")
    return tuple(value)


def _flag(value: Any, key: str, fail: Fail) -> bool:
    if not isinstance(value, bool):
        raise fail(key, value, "must be true or false")
    return value


def _mapping(d: Any, section: str, keys: set[str], fail: Fail) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise fail(section, d, f"must be a mapping with keys {', '.join(sorted(keys))}")
    for k in d:
        if k not in keys:
            raise fail(f"{section}.{k}", d[k], f"is not a known key; known: {', '.join(sorted(keys))}")
    return d


def parse_activations(d: Any, fail: Fail) -> ActivationOptions:
    """`ActivationOptions` from the recipe's ``activations:`` value (a number is shorthand for the sparsity)."""
    if isinstance(d, (int, float)) and not isinstance(d, bool):
        d = {"sparsity": d}
    d = _mapping(d, "activations", _ACTIVATION_KEYS, fail)
    s = d.get("sparsity", 0.0)
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s < 1.0:
        raise fail("activations.sparsity", s, "must be a number in [0, 1)")
    allocation = d.get("allocation", "uniform")
    if allocation not in ALLOCATIONS:
        raise fail("activations.allocation", allocation, f"must be one of {', '.join(ALLOCATIONS)}")
    exact = _flag(d.get("exact", False), "activations.exact", fail)
    if s == 0 and not exact:
        raise fail("activations.sparsity", s, "is 0 and exact is false: the section would do nothing")
    exclude = d.get("exclude")
    return ActivationOptions(float(s), allocation, _globs(d.get("layers", ["*"]), "activations.layers", fail),
                             None if exclude is None else _globs(exclude, "activations.exclude", fail), exact)


def parse_attention(d: Any, fail: Fail) -> AttentionOptions:
    """`AttentionOptions` from the recipe's ``attention:`` value."""
    d = _mapping({} if d is None else d, "attention", _ATTENTION_KEYS, fail)
    block = d.get("block", 64)
    try:
        check_block(block)
    except ValueError as e:
        raise fail("attention.block", block, str(e).split(", got")[0].replace("attention block ", "")) from None
    tau = d.get("tau", 0.95)
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 < tau <= 1.0:
        raise fail("attention.tau", tau, "must be a number in (0, 1] (the kept share of attention mass)")
    reuse = d.get("reuse", 0)
    if isinstance(reuse, bool) or not isinstance(reuse, int) or reuse < 0:
        raise fail("attention.reuse", reuse, "must be a non-negative integer")
    return AttentionOptions(block, float(tau), _flag(d.get("sink", False), "attention.sink", fail), reuse,
                            _globs(d.get("include", ["*"]), "attention.include", fail),
                            _globs(d.get("exclude", []), "attention.exclude", fail))

"""The options of structured pruning (a recipe's ``structured:`` section), parsed and checked.

They live in the planning layer so a recipe can hold them without importing
the orchestration that runs them (`sparsecc.flows.structured`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["StructuredOptions", "parse_structured"]


@dataclass(frozen=True)
class StructuredOptions:
    ratio: float = 0.5
    units: tuple[str, ...] = ("channel", "head")
    criterion: str = "l2"
    scope: str = "layer"
    round_to: int = 1
    include: tuple[str, ...] = ()
    protect: tuple[str, ...] = ()
    overrides: tuple[tuple[str, float], ...] = ()
    compensate: bool = False
    reconstruct: bool = False  # least-squares repair of the layers after removed channels (calibration data)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "ratio": self.ratio, "units": list(self.units), "criterion": self.criterion,
            "scope": self.scope, "round_to": self.round_to,
        }
        if self.include:
            d["include"] = list(self.include)
        if self.protect:
            d["protect"] = list(self.protect)
        if self.overrides:
            d["overrides"] = dict(self.overrides)
        if self.compensate:
            d["compensate"] = True
        if self.reconstruct:
            d["reconstruct"] = True
        return d


_KEYS = {"ratio", "units", "criterion", "scope", "round_to", "include", "protect", "overrides", "compensate",
         "reconstruct"}
_CRITERIA = ("l1", "l2", "bn_scale", "bn_energy", "taylor", "random")


def parse_structured(value: Any, error: Callable[[str, Any, str], Exception], key: str = "structured") -> StructuredOptions:
    """Check a recipe's ``structured:`` mapping; ``error(key, value, message)`` builds the exception."""
    if value is None or value is True:
        value = {}
    if not isinstance(value, dict):
        raise error(key, value, "must be a mapping (" + ", ".join(sorted(_KEYS)) + ")")
    for k in value:
        if k not in _KEYS:
            raise error(f"{key}.{k}", value[k], f"is not a known key; known: {', '.join(sorted(_KEYS))}")
    ratio = value.get("ratio", 0.5)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise error(f"{key}.ratio", ratio, "must be a number in [0, 1)")
    units = value.get("units", ["channel", "head"])
    units = [units] if isinstance(units, str) else units
    if not isinstance(units, list) or not units or any(u not in ("channel", "head", "strided") for u in units):
        raise error(f"{key}.units", units, "must be a list of channel, head, strided")
    criterion = value.get("criterion", "l2")
    if criterion not in _CRITERIA:
        raise error(f"{key}.criterion", criterion, f"is not a structured criterion; known: {', '.join(_CRITERIA)}")
    scope = value.get("scope", "layer")
    if scope not in ("layer", "global"):
        raise error(f"{key}.scope", scope, "must be 'layer' or 'global'")
    round_to = value.get("round_to", 1)
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise error(f"{key}.round_to", round_to, "must be a positive integer (8, 16, 32 suit fast kernels)")

    def globs(k: str) -> tuple[str, ...]:
        v = value.get(k, [])
        v = [v] if isinstance(v, str) else v
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise error(f"{key}.{k}", v, "must be a string or a list of strings")
        return tuple(v)

    overrides = value.get("overrides", {}) or {}
    if not isinstance(overrides, dict):
        raise error(f"{key}.overrides", overrides, "must be a mapping of pattern to ratio")
    for pat, r in overrides.items():
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise error(f"{key}.overrides.{pat}", r, "must be a number in [0, 1)")
    compensate = value.get("compensate", False)
    if not isinstance(compensate, bool):
        raise error(f"{key}.compensate", compensate, "must be true or false")
    reconstruct = value.get("reconstruct", False)
    if not isinstance(reconstruct, bool):
        raise error(f"{key}.reconstruct", reconstruct, "must be true or false")
    return StructuredOptions(float(ratio), tuple(units), criterion, scope, round_to, globs("include"),
                             globs("protect"), tuple((str(k), float(v)) for k, v in overrides.items()), compensate,
                             reconstruct)

"""Which layers TensorRT found eligible for 2:4 sparse math, and for which it picked a sparse kernel.

With sparse weights enabled (``BuilderFlag.SPARSE_WEIGHTS`` / ``trtexec
--sparsity=enable``) the builder logs two INFO lines after tactic selection::

    [I] [TRT] (Sparsity) Layers eligible for sparse math: conv1 + relu1, node_MatMul_58
    [I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers: conv1 + relu1

Names are the engine's layer names, separated by ", "; a fused layer joins
its parts with " + ". Either list may be empty (nothing after the colon).
The prefix before ``(Sparsity)`` differs between trtexec, the Python logger
and polygraphy, so only the text from ``(Sparsity)`` on is matched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

__all__ = ["SparsityLog", "parse_build_log", "split_layer_list", "ELIGIBLE_MARKER", "PICKED_MARKER"]

ELIGIBLE_MARKER = "(Sparsity) Layers eligible for sparse math:"
PICKED_MARKER = "(Sparsity) TRT inference plan picked sparse implementation for layers:"
_LINE = re.compile(r"\(Sparsity\) (Layers eligible for sparse math|TRT inference plan picked sparse implementation for layers):(.*)$")
# trtexec prints "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # ..."
_VERSION = re.compile(r"\[TensorRT v(\d+)\]")


@dataclass
class SparsityLog:
    """The two sparsity lists of one build (``None``: the line was not in the log)."""

    eligible: list[str] | None = None
    picked: list[str] | None = None
    trt_version: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.eligible is not None

    def to_dict(self) -> dict:
        return {"eligible": self.eligible, "picked": self.picked, "trt_version": self.trt_version,
                "warnings": self.warnings}


def split_layer_list(text: str) -> list[str]:
    """``"a + b, c"`` -> ``["a + b", "c"]``; brackets (``ForeignNode[x...y]``) may hold commas."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "[({":
            depth += 1
        elif ch in "])}":
            depth = max(depth - 1, 0)
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return [s for s in out if s]


def _version(code: str) -> str:
    """trtexec's packed version: 8601 -> 8.6.1, 100300 -> 10.3.0, 110400 -> 11.4.0."""
    n = int(code)
    if n >= 100000:
        return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    return f"{n // 1000}.{n // 100 % 10}.{n % 100}"


def parse_build_log(lines: str | Iterable[str]) -> SparsityLog:
    """Read the sparsity lists (and trtexec's version banner) from a TensorRT build log."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    log = SparsityLog()
    for raw in lines:
        line = raw.rstrip("\r\n")
        if log.trt_version is None:
            v = _VERSION.search(line)
            if v:
                log.trt_version = _version(v.group(1))
        m = _LINE.search(line)
        if not m:
            if "sparsity" in line.lower() and ("[W]" in line or "WARNING" in line):
                log.warnings.append(line.strip())
            continue
        names = split_layer_list(m.group(2))
        if m.group(1).startswith("Layers eligible"):
            # A build with several optimisation profiles logs once per build; keep the union.
            log.eligible = (log.eligible or []) + [n for n in names if n not in (log.eligible or [])]
        else:
            log.picked = (log.picked or []) + [n for n in names if n not in (log.picked or [])]
    return log

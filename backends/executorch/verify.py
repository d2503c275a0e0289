"""Re-check each weight's sparsity pattern on the bytes stored in the ``.pte``.

The weight index (built at lowering) says where a weight lives and in which
layout; everything else, the stored dims, dtype, named-data key and bytes,
is read back from the file. The pattern is checked in that stored layout,
along the reduction axis as it is stored (for an NHWC conv filter that is
the last axis), with the same rules as `sparsecc.masks.pattern_violation`.
A weight a sparsecc custom op holds compressed is rebuilt from its three
stored constants (crow indices, column indices, values; their index
invariants checked) and checked as ``[out, in]``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from sparsecc.backends.base import PatternCheck
from sparsecc.core.ir import MaskSpec
from sparsecc.kernels import CompressedWeight
from sparsecc.plan.masks import pattern_violation, sparsity_of

from .pte import PteReader

__all__ = ["verify_patterns"]


def _compressed(reader: PteReader, entry: Mapping[str, Any]) -> tuple[torch.Tensor, str, str]:
    """The weight a sparsecc custom op holds, rebuilt dense (PyTorch layout) from its three stored constants."""
    consts = {c.value_index: c for c in reader.constant_tensors()}
    parts = []
    for role in ("crow_indices", "col_indices", "values"):
        c = consts.get(int(entry[role]["value"]))
        if c is None:
            raise KeyError(f"the .pte has no constant tensor at value {entry[role]['value']} ({role})")
        parts.append(reader.constant(c))
    shape = tuple(int(d) for d in entry["dims"])
    # to_dense checks the index invariants: a corrupted index fails here, not as a wrong pattern
    dense = CompressedWeight(*parts, shape=shape, block=int(entry["block"])).to_dense()
    where = ", ".join(str(entry[r]["buffer"]) for r in ("crow_indices", "col_indices", "values"))
    return dense.reshape(entry["torch_shape"]), f"{entry['op']} ({entry['format']}, constant buffers {where})", ""


def _stored(reader: PteReader, entry: Mapping[str, Any]) -> tuple[torch.Tensor, str, str]:
    """The stored tensor, where it lives, and a problem with it (or "")."""
    if entry["where"] == "custom_op":
        return _compressed(reader, entry)
    if entry["where"] == "xnnpack":
        tensor, key = reader.xnnpack_tensor(int(entry["delegate"]), int(entry["value"]))
        location = f"XNNPACK delegate {entry['delegate']}, value {entry['value']}, named data {key[:16]}"
        problem = "" if key == entry.get("named_key") else f"named data key changed since lowering ({key[:16]})"
        return tensor, location, problem
    const = next((c for c in reader.constant_tensors() if c.value_index == int(entry["value"])), None)
    if const is None:
        raise KeyError(f"the .pte has no constant tensor at value {entry['value']}")
    return reader.constant(const), f"constant buffer {const.buffer_index} (value {const.value_index})", ""


def verify_patterns(
    reader: PteReader, index: Mapping[str, Mapping[str, Any]], specs: Sequence[MaskSpec]
) -> list[PatternCheck]:
    """One `PatternCheck` per spec, on the weight as stored in the ``.pte``."""
    checks = []
    for spec in specs:
        pattern = str(spec.pattern)
        entry = index.get(spec.fqn)
        if entry is None or entry.get("where") == "missing":
            note = entry.get("note", "") if entry else "not a prunable weight of the lowered program"
            checks.append(PatternCheck(spec.fqn, pattern, "not found in the .pte", "", False, math.nan,
                                       f"cannot check: {note}"))
            continue
        try:
            tensor, location, problem = _stored(reader, entry)
        except (KeyError, ValueError, IndexError, RuntimeError) as e:
            checks.append(PatternCheck(spec.fqn, pattern, f"{entry['where']} (unreadable)", entry.get("layout", ""),
                                       False, math.nan, f"cannot read the stored weight: {e}"))
            continue
        why = problem or pattern_violation(
            tensor.float(), spec.pattern, spec.target, int(entry["output_axis"]), int(entry["reduction_axis"])
        )
        reason = why or entry.get("note", "")
        checks.append(PatternCheck(spec.fqn, pattern, location, entry["layout"], not why,
                                   sparsity_of(tensor), reason))
    return checks

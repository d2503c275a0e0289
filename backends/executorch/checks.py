"""What ExecuTorch + XNNPACK does with each prunable layer's sparsity.

ExecuTorch builds XNNPACK with its sparse inference off and never asks for
it, and XNNPACK itself disables its sparse path on x86 CPUs with AVX: zeros
in a weight never make a layer faster here. A layer XNNPACK takes runs
dense (`Support.DENSE`); one it does not take runs on ExecuTorch's portable
kernels, dense reference loops (`Support.UNSUPPORTED`, with XNNPACK's reason).
"""

from __future__ import annotations

from typing import Any, Mapping

from sparsecc.backends.base import LayerCheck, Support

__all__ = ["layer_checks", "DENSE_REASON", "PORTABLE_REASON", "INT8_REASON", "CUSTOM_OP_REASON"]

DENSE_REASON = (
    "runs dense: saves size, not time (XNNPACK has no sparse kernels here); channel pruning makes it faster"
)
PORTABLE_REASON = (
    "not delegated to XNNPACK ({why}): runs dense on ExecuTorch's portable kernels (slow reference "
    "loops); zeros save size (zstd), not time"
)


INT8_REASON = (
    "runs int8 in XNNPACK (qd8-f32-qc8w: activations quantized per token at run time, the program's "
    "per-channel int8 weights), dense: zeros save size, not time"
)


CUSTOM_OP_REASON = "runs sparse: {op} over the weight stored compressed ({format}), {speedup} at lowering"


def _speedup(rec: Mapping[str, Any]) -> str:
    s = rec.get("speedup")
    return "not timed (no nonzeros)" if s is None else f"measured {s:.2f}x as fast as XNNPACK dense"


def layer_checks(report: Mapping[str, Any], int8: Mapping[str, Any] | None = None) -> list[LayerCheck]:
    """One `LayerCheck` per prunable layer of a delegation report (``int8``: FQNs lowered to int8)."""
    checks = []
    int8 = int8 or {}
    for e in report["layers"]:
        if e["where"] == "custom_op":
            rec = e.get("custom_op") or {}
            checks.append(LayerCheck(e["layer"], e["fqn"], Support.SPARSE, CUSTOM_OP_REASON.format(
                op=rec.get("op", "a sparsecc kernel"), format=rec.get("format", "?"), speedup=_speedup(rec))))
        elif e["where"] == "xnnpack" and e["fqn"] in int8:
            checks.append(LayerCheck(e["layer"], e["fqn"], Support.DENSE, INT8_REASON))
        elif e["where"] == "xnnpack" and e.get("custom_op"):  # timed, and the sparse kernel was not faster
            checks.append(LayerCheck(e["layer"], e["fqn"], Support.DENSE, f"runs dense in XNNPACK: sparsecc's "
                                     f"kernel ({e['custom_op']['format']}) was {_speedup(e['custom_op'])}"))
        elif e["where"] == "xnnpack":
            checks.append(LayerCheck(e["layer"], e["fqn"], Support.DENSE, DENSE_REASON))
        elif e["where"] == "portable":
            why = e.get("reason") or "XNNPACK did not take it"
            checks.append(LayerCheck(e["layer"], e["fqn"], Support.UNSUPPORTED, PORTABLE_REASON.format(why=why)))
        else:
            checks.append(LayerCheck(e["layer"], e["fqn"], Support.UNSUPPORTED, e.get("reason") or "not lowered"))
    return checks

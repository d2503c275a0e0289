#!/usr/bin/env python3
"""Compare TensorRT outputs on the golden inputs with the PyTorch reference outputs.

    python3 compare.py golden.npz build/sparse.outputs.json [--rtol 0.01] [--label sparse]

``golden.npz`` holds ``input_<name>`` and ``output_<i>_<name>`` arrays (the
PyTorch program's fp32 outputs); the JSON is what ``trtexec --exportOutput``
writes: a list of ``{"name", "dimensions": "2x8x384", "values": [...]}``.
Each output must agree within ``atol + rtol * max|reference|``: relative to
the output's scale, because FP16 rounding scales with the activations.
Needs only numpy (this file is copied into edge bundles as compare.py).
Exit status 0 when every output agrees, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

__all__ = ["FP16_RTOL", "FP16_ATOL", "load_trtexec_outputs", "compare_outputs", "main"]

# FP16 keeps 11 significant bits (unit roundoff 2**-11 = 4.9e-4); every layer
# rounds its activations once more and GPU kernels may accumulate in FP16, so
# outputs of a deep FP16 network agree with the fp32 reference to a few times
# 1e-3 of their scale. 1e-2 (20 FP16 units at the output's scale) admits that
# and still catches a wrong layer, whose error is of the order of the scale.
FP16_RTOL = 1e-2
FP16_ATOL = 1e-3


def load_trtexec_outputs(path: str) -> dict[str, np.ndarray]:
    with open(path) as f:
        data = json.load(f)
    out = {}
    for rec in data:
        dims = rec.get("dimensions", "")
        shape = [int(d) for d in dims.split("x") if d] if isinstance(dims, str) else [int(d) for d in dims]
        out[rec["name"]] = np.asarray(rec["values"], dtype=np.float64).reshape(shape)
    return out


def _golden(npz: Any) -> list[tuple[str, np.ndarray]]:
    outs = [k for k in npz.files if k.startswith("output_")]
    outs.sort(key=lambda k: int(k.split("_", 2)[1]))
    return [(k.split("_", 2)[2], npz[k]) for k in outs]


def compare_outputs(golden: list[tuple[str, np.ndarray]], got: dict[str, np.ndarray],
                    rtol: float = FP16_RTOL, atol: float = FP16_ATOL) -> list[dict[str, Any]]:
    results = []
    for name, want in golden:
        if name not in got:
            results.append({"output": name, "ok": False, "reason": f"missing (have: {', '.join(got) or 'none'})"})
            continue
        have = got[name]
        if have.size != want.size:
            results.append({"output": name, "ok": False, "reason": f"shape {list(have.shape)} != {list(want.shape)}"})
            continue
        have = have.reshape(want.shape)
        if not np.issubdtype(want.dtype, np.floating):
            same = bool(np.array_equal(have.astype(want.dtype), want))
            results.append({"output": name, "ok": same, "reason": "" if same else "integer outputs differ"})
            continue
        err = float(np.abs(have - want.astype(np.float64)).max()) if want.size else 0.0
        scale = float(np.abs(want).max()) if want.size else 0.0
        ok = bool(np.isfinite(have).all()) and err <= atol + rtol * scale
        results.append({"output": name, "ok": ok, "max_abs_err": err, "scale": scale,
                        "rel_err": err / scale if scale else 0.0,
                        "reason": "" if ok else f"max abs err {err:.3g} > {atol} + {rtol} * {scale:.3g}"})
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("golden", help="golden.npz from the bundle")
    p.add_argument("outputs", help="JSON written by trtexec --exportOutput")
    p.add_argument("--rtol", type=float, default=FP16_RTOL, help="tolerance relative to each output's max |value|")
    p.add_argument("--atol", type=float, default=FP16_ATOL)
    p.add_argument("--label", default="", help="name to print (sparse, dense)")
    a = p.parse_args(argv)
    try:
        results = compare_outputs(_golden(np.load(a.golden)), load_trtexec_outputs(a.outputs), a.rtol, a.atol)
    except (OSError, ValueError, KeyError) as e:
        print(f"compare.py: cannot compare {a.outputs} with {a.golden}: {e}", file=sys.stderr)
        return 1
    for r in results:
        detail = f"rel err {r['rel_err']:.2e}" if "rel_err" in r else r["reason"]
        print(f"{a.label + ': ' if a.label else ''}{r['output']}: {'ok' if r['ok'] else 'MISMATCH'} ({detail})")
    return 0 if results and all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""cuSPARSELt options against dense, kernel time only: does any of them make 2:4 pay where the default does not?

For each (out, in, tokens) linear, replayed from CUDA graphs and timed
interleaved (medians of --rounds):

- ``dense``: ``F.linear`` on the dense fp16 weight (cuBLAS);
- ``2:4``: ``to_sparse_semi_structured(w)``, torch's default (algorithm 0);
- ``2:4 fused-T``: the same with ``SparseSemiStructuredTensor._FUSE_TRANSPOSE``,
  so cuSPARSELt writes the output already transposed;
- ``2:4 searched``: the algorithm id that ``torch._cslt_sparse_mm_search``
  picks for this input.

    python bench/bench_cusparselt_variants.py [--dtype float16|bfloat16] [--rounds 100]

A variant that fails to set up is reported as failed and the others still
run: on an H200 with torch 2.11 / cuSPARSELt 0.8 the searched algorithm id
was sometimes refused when set ("invalid value when calling
cusparseLtMatmulAlgSetAttribute"). Once, for a 4096x4096 linear at 8192
tokens, it left the CUDA context unusable ("illegal instruction"), and no
further timing in that process could run. So 8192 tokens is not a default
shape; pass --shape OUT IN TOKENS to time it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from sparsecc.backends.torch_semi_structured.measure import graphed, cuda_event_times

sys.path.insert(0, str(Path(__file__).parent))
from bench_semi_structured import _machine, _require_gpu  # noqa: E402

SHAPES = [(4096, 4096, 2048), (4096, 4096, 512), (3072, 768, 2048), (768, 3072, 2048)]


def _sparse(w: torch.Tensor, fuse_transpose: bool, alg: int | None = None):
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    from sparsecc.backends.torch_semi_structured import force_cutlass

    before = SparseSemiStructuredTensor._FUSE_TRANSPOSE
    SparseSemiStructuredTensor._FUSE_TRANSPOSE = fuse_transpose
    try:
        with force_cutlass(False):
            s = to_sparse_semi_structured(w)
    finally:
        SparseSemiStructuredTensor._FUSE_TRANSPOSE = before
    if alg is not None:
        s.alg_id_cusparselt = alg
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--shape", nargs=3, type=int, action="append", metavar=("OUT", "IN", "TOKENS"),
                    help="time this linear instead of the default shapes (repeatable)")
    a = ap.parse_args()
    _require_gpu()
    from sparsecc.testing import prune_

    dtype = getattr(torch, a.dtype)
    m = _machine()
    print(f"{m['gpu']} (sm {m['capability']}), CUDA {m['cuda']}, torch {m['torch']}, cuSPARSELt {m['cusparselt']}; "
          f"CUDA-graph replays, {a.rounds} interleaved rounds, medians in microseconds (speedup over dense)\n")
    print("| linear | tokens | searched alg | dense | 2:4 | 2:4 fused-T | 2:4 searched |\n|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for out, inp, tokens in a.shape or SHAPES:
            torch.manual_seed(0)
            w = prune_(torch.randn(out, inp, device="cuda", dtype=dtype), "2:4")
            b = torch.randn(out, device="cuda", dtype=dtype)
            x = torch.randn(tokens, inp, device="cuda", dtype=dtype)
            default = _sparse(w, False)
            alg = torch._cslt_sparse_mm_search(default.packed, x.t().contiguous())  # W @ x^T, as F.linear runs it
            weights = {"dense": w, "2:4": default, "2:4 fused-T": _sparse(w, True), "2:4 searched": _sparse(w, False, alg)}
            fns, failed = {}, {}
            for name, wt in weights.items():
                try:
                    fns[name] = graphed(lambda wt=wt: F.linear(x, wt, b))
                except RuntimeError as e:  # cuSPARSELt refused this configuration: report it, time the rest
                    failed[name] = str(e).split("\n")[0][:80]
            med = {name: statistics.median(t) * 1e3 for name, t in cuda_event_times(fns, a.rounds).items()}
            cells = [f"failed: {failed[n]}" if n in failed else f"{med[n]:.1f} (x{med['dense'] / med[n]:.2f})"
                     for n in weights]
            print(f"| {out}x{inp} | {tokens} | {alg} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

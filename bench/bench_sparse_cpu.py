"""Sparse weight x dense activations on the CPU against ONNX Runtime's dense product.

For each weight shape, pattern (unstructured, 8x8 blocks), sparsity, token
count and thread count, times side by side, interleaved (rounds of A B C,
order alternating, medians):

- ``ort dense``: ONNX Runtime's MatMul over the weight stored dense (its CPU
  kernels run zeros as dense), spin-waiting off as in `sparsecc.ort_session`;
- ``sparsecc``: sparsecc's own kernel (``csr`` for unstructured, ``bsr`` with
  the pattern's blocks), `torch.ops.sparsecc.sparse_linear`;
- ``torch mkl``: torch's MKL sparse product over the same compressed weight,
  ``(W @ x^T)^T``, for reference.

The ratio is ONNX Runtime's median over sparsecc's (above 1: sparse faster).
Masks come from magnitude pruning of random weights (sparsecc.masks).

    .venv/bin/python bench/bench_sparse_cpu.py [--shapes 768x3072,3072x768] [--sparsities 0.5,0.7,0.8,0.9,0.95]
        [--patterns unstructured,8x8] [--tokens 1,8,128] [--threads 1,2] [--rounds 11] [--json out.json]

A shape ``OUTxIN`` is the weight ``[out_features, in_features]``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from sparsecc import kernels
from sparsecc.core.ir import SparsityPattern
from sparsecc.core.timing import time_interleaved
from sparsecc.core.machine import machine_info
from sparsecc.plan.masks import compute_mask
from sparsecc.core.ort_session import onnxruntime_module, session_options


def ort_matmul(weight: torch.Tensor, threads: int):
    """An ONNX Runtime session computing ``x @ W.T`` for ``x [tokens, in]``, the weight dense."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out_f, in_f = weight.shape
    w = numpy_helper.from_array(weight.t().contiguous().numpy(), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["tokens", in_f])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["tokens", out_f])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    ort = onnxruntime_module()
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=session_options(threads),
                                providers=["CPUExecutionProvider"])
    return sess


def masked_weight(out_f: int, in_f: int, pattern: SparsityPattern, sparsity: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) / in_f**0.5
    keep = compute_mask(w.abs(), pattern, sparsity, output_axis=0, reduction_axis=1)
    return w * keep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="768x3072,3072x768")
    ap.add_argument("--patterns", default="unstructured,8x8")
    ap.add_argument("--sparsities", default="0.5,0.7,0.8,0.9,0.95")
    ap.add_argument("--tokens", default="1,8,128")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--sample-ms", type=float, default=3.0, help="target duration of one timed sample")
    ap.add_argument("--no-torch", action="store_true", help="leave out torch's MKL sparse product")
    ap.add_argument("--json", help="also write every measurement to this file")
    args = ap.parse_args()

    kernels.load()
    info = machine_info()
    print(f"# machine: {info['cpu']} ({', '.join(info['cpu_flags'])}), {info['cores']} cores, {info['os']}, "
          f"Python {info['python']}; torch {torch.__version__}, onnxruntime {info['versions'].get('onnxruntime')}, "
          f"sparsecc kernels: {kernels.isa()}; load avg {os.getloadavg()[0]:.2f} at start")
    print("# ratio = ONNX Runtime dense median / sparse median (above 1: sparse faster); "
          f"{args.rounds} interleaved rounds, medians")
    cols = ["weight", "pattern", "sparsity", "tokens", "threads", "ORT dense ms", "sparsecc ms", "sparsecc vs ORT"]
    if not args.no_torch:
        cols += ["torch MKL ms", "torch MKL vs ORT"]
    cols.append("load")
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(cols))) + "|")
    rows = []
    for shape in args.shapes.split(","):
        out_f, in_f = (int(v) for v in shape.lower().split("x"))
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            dense = torch.randn(out_f, in_f)
            sess = ort_matmul(dense, threads)  # ORT's dense time does not depend on the values
            for pat_text in args.patterns.split(","):
                pattern = SparsityPattern.parse(pat_text)
                block = pattern.block[0] if pattern.kind == "block" else 1
                for sparsity in (float(s) for s in args.sparsities.split(",")):
                    w = masked_weight(out_f, in_f, pattern, sparsity, seed=int(sparsity * 100))
                    cw = kernels.compress(w, block)
                    own = "csr" if block == 1 else "bsr"
                    for tokens in (int(t) for t in args.tokens.split(",")):
                        x = torch.randn(tokens, in_f)
                        xn = x.numpy()
                        ref = torch.nn.functional.linear(x, w)
                        got = kernels.sparse_linear(x, cw, kernel=own)
                        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
                        variants = {
                            "ort": lambda: sess.run(None, {"x": xn}),
                            "own": lambda: kernels.sparse_linear(x, cw, kernel=own),
                        }
                        if not args.no_torch:
                            variants["torch"] = lambda: kernels.sparse_linear(x, cw, kernel="torch_" + own)
                        with torch.inference_mode():
                            med = time_interleaved(variants, rounds=args.rounds,
                                                   sample_s=args.sample_ms / 1e3).medians()
                        load = os.getloadavg()[0]
                        row = {"weight": f"{out_f}x{in_f}", "pattern": str(pattern), "sparsity": sparsity,
                               "tokens": tokens, "threads": threads, "ort_ms": med["ort"] * 1e3,
                               "sparsecc_ms": med["own"] * 1e3, "ratio": med["ort"] / med["own"], "load": load}
                        cells = [row["weight"], row["pattern"], f"{sparsity:.0%}", str(tokens), str(threads),
                                 f"{row['ort_ms']:.3f}", f"{row['sparsecc_ms']:.3f}", f"{row['ratio']:.2f}x"]
                        if not args.no_torch:
                            row["torch_ms"] = med["torch"] * 1e3
                            row["torch_ratio"] = med["ort"] / med["torch"]
                            cells += [f"{row['torch_ms']:.3f}", f"{row['torch_ratio']:.2f}x"]
                        cells.append(f"{load:.2f}")
                        print("| " + " | ".join(cells) + " |", flush=True)
                        rows.append(row)
    print(f"# load avg {os.getloadavg()[0]:.2f} at end")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

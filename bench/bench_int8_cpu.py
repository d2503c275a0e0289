"""int8 sparse kernels on the CPU against the dense runtimes a user would pick: ONNX Runtime int8 and fp32.

For each weight shape, layout (unstructured -> sparsecc's 1x4 row groups,
``8x8`` / ``4x4`` / ``16x16`` -> int8 BSR), sparsity, token count and ISA,
times side by side, interleaved in one process (rounds of A B C .., order
alternating, medians), one thread by default:

- ``ORT int8``: ``onnxruntime.quantization.quantize_dynamic`` (int8 per-channel
  weights, dynamic uint8 activations) of a one-layer Gemm model: the dense
  int8 model a CPU user tries first;
- ``ORT fp32``: the same model unquantized, ONNX Runtime's dense product;
- ``torch int8``: torch's dynamic int8 linear (fbgemm), when the build has it;
- ``sparsecc int8``: `torch.ops.sparsecc.int8_linear` over the sparse weight,
  per ISA (``@avx512`` is VNNI, ``@avx2`` vpmaddwd).

Each row checks first that the sparse kernel equals sparsecc's dense int8
kernel bit for bit (same integers, same dequantization). The summary gives,
per shape, token count and layout, the break-even sparsity: the lowest one
measured where the best ISA beats ORT int8 (and ORT fp32).

    .venv/bin/python bench/bench_int8_cpu.py [--shapes 3072x768,768x3072] [--tokens 1,8,128]
        [--sparsities 0.5,0.7,0.8,0.9,0.95] [--patterns unstructured,8x8] [--threads 1] [--rounds 11]
        [--json out.json] [--quick]

Run it alone on the machine: timings taken while other work runs are wrong.

``--quality`` instead measures quality (no timing): SmolLM2-135M perplexity
on the README protocol (2:4 SparseGPT, 64 calibration windows of 256 tokens,
the first ``--eval-windows`` evaluation windows) for 2:4 fp32, 2:4 + int8
weights (fake-quantized) and 2:4 + int8 through the int8 kernels (int8
activations per token too), next to dense fp32 and dense int8; and MiniLM's
Lee similarity (Spearman, cosine to the dense fp32 embeddings) for the same
variants at 2:4 magnitude (MiniLM has no calibration protocol).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from sparsecc import kernels
from sparsecc.backends.torch_sparse.dense_reference import ort_linear, torch_dynamic_int8
from sparsecc.backends.torch_sparse.int8_select import available_isas
from sparsecc.core.ir import SparsityPattern
from sparsecc.core.machine import machine_info
from sparsecc.core.timing import time_interleaved
from sparsecc.plan.masks import compute_mask

QUICK = dict(shapes="256x128", tokens="1,8", sparsities="0.5,0.9", patterns="unstructured,8x8", rounds=2,
             sample_ms=0.2)


def sparse_weight(out_f: int, in_f: int, pattern: SparsityPattern, sparsity: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) / in_f**0.5
    return w * compute_mask(w.abs(), pattern, sparsity, output_axis=0, reduction_axis=1)


def _row(out_f, in_f, pattern, sparsity, tokens, isas, threads, args) -> dict:
    w = sparse_weight(out_f, in_f, pattern, sparsity, seed=int(sparsity * 100))
    q, scale = kernels.quantize_per_channel(w)
    wq = q.float() * scale[:, None]
    block = (1, 4) if pattern.kind != "block" else pattern.block
    packed = kernels.compress_int8(q, scale, block)
    x = torch.randn(tokens, in_f, generator=torch.Generator().manual_seed(tokens))
    want = kernels.dense_int8_linear(x, q, scale)
    variants = {}
    for isa in isas:
        got = kernels.int8_linear(x, packed, isa=isa)
        if not torch.equal(got, want):
            raise AssertionError(f"int8 {block} on {isa} differs from the dense int8 kernel ({out_f}x{in_f})")
        variants[f"own@{isa}"] = (lambda i=isa: kernels.int8_linear(x, packed, isa=i))
    for name, f in (("ort_int8", ort_linear(wq, None, x, int8=True, threads=threads)),
                    ("ort_fp32", ort_linear(wq, None, x, threads=threads)),
                    ("torch_int8", torch_dynamic_int8(wq, None, x))):
        if f is not None:
            variants[name] = f
    with torch.inference_mode():
        med = time_interleaved(variants, rounds=args.rounds, sample_s=args.sample_ms / 1e3).medians()
    ms = {k: v * 1e3 for k, v in med.items()}
    best = min((k for k in ms if k.startswith("own@")), key=ms.__getitem__)
    return {"weight": f"{out_f}x{in_f}", "pattern": str(pattern), "layout": "1x4 groups" if block == (1, 4)
            else f"BSR {block[0]}x{block[1]}", "sparsity": sparsity, "tokens": tokens, "threads": threads,
            "ms": ms, "best": best, "vs_ort_int8": ms.get("ort_int8", float("nan")) / ms[best],
            "vs_ort_fp32": ms.get("ort_fp32", float("nan")) / ms[best], "load": os.getloadavg()[0]}


def _print_row(row: dict, isas: list[str]) -> None:
    ms = row["ms"]
    cells = [row["weight"], row["layout"], f"{row['sparsity']:.0%}", str(row["tokens"])]
    cells += [f"{ms.get(k, float('nan')):.4f}" for k in ("ort_int8", "ort_fp32", "torch_int8")]
    cells += [f"{ms[f'own@{i}']:.4f}" for i in isas]
    cells += [row["best"].split("@")[1], f"{row['vs_ort_int8']:.2f}x", f"{row['vs_ort_fp32']:.2f}x", f"{row['load']:.2f}"]
    print("| " + " | ".join(cells) + " |", flush=True)


def break_even(rows: list[dict], key: str) -> dict[tuple, float | None]:
    """Per (weight, tokens, layout): the lowest sparsity measured where sparse beats the reference."""
    out: dict[tuple, float | None] = {}
    for r in sorted(rows, key=lambda r: r["sparsity"]):
        k = (r["weight"], r["tokens"], r["layout"])
        out.setdefault(k, None)
        if out[k] is None and r[key] >= 1.0:
            out[k] = r["sparsity"]
    return out


def _variants(program):
    """fp32, int8 weights (fake-quantized), int8 kernels (every candidate layer on int8_g4)."""
    from sparsecc.backends.torch_sparse.kernel_select import fixed_kernels
    from sparsecc.backends.torch_sparse.rewrite_sparse_kernels import RewriteSparseKernelsPass
    from sparsecc.passes import QuantizeWeightsPass

    q = QuantizeWeightsPass()(program).program
    return program, q, RewriteSparseKernelsPass(fixed_kernels(q, "int8_g4").choices)(q).program


def minilm_quality() -> None:
    from sparsecc import capture, sparsify
    from sparsecc.models import get_model
    from sparsecc.quality.evaluate import evaluate, reference_outputs

    spec = get_model("minilm")
    program = capture(spec.model, spec.example_args, spec.example_kwargs, spec.dynamic_shapes)
    ref = reference_outputs("lee-similarity", spec)
    print("# MiniLM Lee similarity: spearman / cosine to dense fp32 embeddings")
    print("| weights | fp32 | int8 weights (fake-quantized) | int8 kernels (int8 weights and activations) |")
    print("|---|---:|---:|---:|")
    for name, prog in (("dense", program), ("2:4 magnitude", sparsify(program, {"pattern": "2:4"}, fold=True).program)):
        cells = []
        for p in _variants(prog):
            m = evaluate(p, "lee-similarity", model=spec, reference_raw=ref).metrics
            cells.append(f"{m['spearman']:.4f} / {m['cosine_to_dense']:.4f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def quality(eval_windows: int, criterion: str = "sparsegpt", rows: tuple[str, ...] = ("dense", "2:4")) -> None:
    """SmolLM2 perplexity: fp32 / int8 weights / int8 kernels, dense and 2:4 (README protocol)."""
    from sparsecc import capture, sparsify
    from sparsecc.data import calibration_inputs
    from sparsecc.models import get_model
    from sparsecc.plan.calibrate import CalibrationData
    from sparsecc.quality.evaluate import EvalOptions, evaluate, reference_outputs

    spec = get_model("smollm2")
    program = capture(spec.model, spec.example_args, spec.example_kwargs, spec.dynamic_shapes)
    opts = EvalOptions(max_windows=eval_windows)
    ref = reference_outputs("perplexity", spec, options=opts)
    recipe = {"pattern": "2:4", "criterion": criterion, "calibration": {"samples": 64, "seq_len": 256}}
    data = CalibrationData(calibration_inputs(spec, 64, 256))
    sparse = sparsify(program, recipe, fold=True, calibration=data).program
    print(f"# SmolLM2-135M perplexity, {eval_windows} windows of 256 tokens; 2:4 = {criterion}; "
          "lm_head (tied embedding) stays fp32 dense", flush=True)
    print("| weights | fp32 | int8 weights (fake-quantized) | int8 kernels (int8 weights and activations) |")
    print("|---|---:|---:|---:|")
    for name, prog in (("dense", program), ("2:4", sparse)):
        if name not in rows:
            continue
        ppl = [evaluate(p, "perplexity", model=spec, reference_raw=ref, options=opts).metrics["perplexity"]
               for p in _variants(prog)]
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in ppl) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="3072x768,768x3072")
    ap.add_argument("--patterns", default="unstructured,8x8")
    ap.add_argument("--sparsities", default="0.5,0.7,0.8,0.9,0.95")
    ap.add_argument("--tokens", default="1,8,128")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--sample-ms", type=float, default=3.0, help="target duration of one timed sample")
    ap.add_argument("--quick", action="store_true", help="a tiny configuration that only shows the bench runs")
    ap.add_argument("--json", help="also write every measurement to this file")
    ap.add_argument("--quality", action="store_true", help="SmolLM2 perplexity with int8 (no timing), then exit")
    ap.add_argument("--eval-windows", type=int, default=40)
    ap.add_argument("--criterion", default="sparsegpt", help="2:4 criterion of the SmolLM2 rows (--quality)")
    ap.add_argument("--quality-models", default="minilm,smollm2", help="which --quality tables to make")
    ap.add_argument("--smollm2-rows", default="dense,2:4", help="which SmolLM2 rows to make (--quality)")
    args = ap.parse_args()
    if args.quality:
        kernels.load()
        if "minilm" in args.quality_models:
            minilm_quality()
        if "smollm2" in args.quality_models:
            quality(args.eval_windows, args.criterion, tuple(args.smollm2_rows.split(",")))
        return
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)

    kernels.load()
    torch.set_num_threads(args.threads)
    isas = available_isas(int8=True)
    info = machine_info()
    print(f"# machine: {info['cpu']} ({', '.join(info['cpu_flags'])}), {info['cores']} cores, {info['os']}, "
          f"Python {info['python']}; torch {torch.__version__}, onnxruntime {info['versions'].get('onnxruntime')}; "
          f"int8 ISAs timed: {', '.join(isas)} (avx512 = VNNI); {args.threads} thread(s); "
          f"load avg {os.getloadavg()[0]:.2f} at start{' (--quick: not a measurement)' if args.quick else ''}")
    print(f"# vs = reference median / fastest sparsecc int8 ISA (above 1: sparse faster); {args.rounds} "
          "interleaved rounds, medians, ms")
    cols = ["weight", "layout", "sparsity", "tokens", "ORT int8", "ORT fp32", "torch int8"]
    cols += [f"int8 {i}" for i in isas] + ["best ISA", "vs ORT int8", "vs ORT fp32", "load"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(cols))) + "|")
    rows = []
    for shape in args.shapes.split(","):
        out_f, in_f = (int(v) for v in shape.lower().split("x"))
        for pat_text in args.patterns.split(","):
            pattern = SparsityPattern.parse(pat_text)
            for sparsity in (float(s) for s in args.sparsities.split(",")):
                for tokens in (int(t) for t in args.tokens.split(",")):
                    row = _row(out_f, in_f, pattern, sparsity, tokens, isas, args.threads, args)
                    _print_row(row, isas)
                    rows.append(row)
    for key, name in (("vs_ort_int8", "ORT int8 dense"), ("vs_ort_fp32", "ORT fp32 dense")):
        print(f"# break-even sparsity against {name} (lowest measured where sparse is faster):")
        for (weight, tokens, layout), s in break_even(rows, key).items():
            print(f"#   {weight} {tokens:>4} tokens {layout:<12} {'none measured' if s is None else f'{s:.0%}'}")
    print(f"# load avg {os.getloadavg()[0]:.2f} at end")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "isas": isas, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

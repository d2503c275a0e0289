"""MiniLM end to end: 90% 8x8-block sparse FFN and attention projections through the torch-sparse
program, against dense MiniLM through ONNX Runtime and through PyTorch, at 128 tokens.

1. Compiles all-MiniLM-L6-v2 with the recipe (default: 8x8 blocks, 90%, every encoder linear;
   magnitude, no recovery) to the ``torch-sparse`` and ``onnx`` targets with the dense reference.
   The example inputs hold ``--seq`` tokens (2 x seq/2), so each linear layer's kernel is chosen by
   measuring it at the token count the benchmark runs (sparsecc.kernel_select).
2. Prints which layers run sparse kernels and which stay dense, with the measured reason.
3. Runs `sparsecc bench` on the bundle (backend torch-sparse: sparse program, dense PyTorch
   program and ONNX Runtime dense, interleaved in one process).
4. Quality (``--quality``): the lee-similarity task of `sparsecc.evaluate` (Pearson/Spearman
   against human ratings, cosine to the dense embeddings) for the dense and the rewritten program.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_minilm_sparse.py [--out out/minilm-bsr8] [--seq 128]
        [--pattern 8x8] [--sparsity 0.9] [--threads 1] [--runs 50] [--quality] [--reuse]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from sparsecc.benchmarking import bench
from sparsecc.benchmarking.format import machine_line, ms, ratio_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/minilm-bsr8")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--pattern", default="8x8")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--threads", default="1")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--quality", action="store_true", help="also run the lee-similarity evaluation")
    ap.add_argument("--reuse", action="store_true", help="benchmark an existing bundle at --out")
    args = ap.parse_args()
    out = Path(args.out)

    from sparsecc.models import get_model

    spec = get_model("minilm")
    # two sequences of seq/2 tokens: the linear layers see the same seq tokens as one sequence of seq
    # (torch.export cannot keep the batch dim dynamic from an example of 1)
    ex_args, ex_kwargs = spec.make_inputs(2, args.seq // 2)
    spec = dataclasses.replace(spec, example_args=ex_args, example_kwargs=ex_kwargs)
    recipe = {"pattern": args.pattern, "sparsity": args.sparsity, "layers": {"exclude": ["pooler*"]}}
    if not args.reuse:
        from sparsecc.flows.compile import compile

        compile(spec, recipe, out, targets=["torch-sparse", "onnx"], force=True,
                progress=lambda m: print(f"  compile: {m}", flush=True))
    manifest = json.loads((out / "manifest.json").read_text())
    plan = manifest["targets"]["torch-sparse"]["artifact"]["meta"]["kernels"]
    print(f"# kernels chosen at {args.seq} tokens, {plan['threads']} thread(s), {plan['isa']}: "
          f"{plan['summary']['sparse']} of {plan['summary']['candidates']} candidate layers run sparse")
    print("| layer | weight | sparsity | kernel | dense ms | best sparse ms | gain | reason |")
    print("|---|---|---:|---|---:|---:|---:|---|")
    for c in plan["layers"]:
        times = c.get("times_ms") or {}
        best = min((v for k, v in times.items() if k != "dense"), default=None)
        print(f"| {c['layer']} | {c['shape'][0]}x{c['shape'][1]} | {c['sparsity']:.1%} | {c['label']} | "
              f"{ms(times.get('dense'))} | {ms(best)} | {c['gain']:.2f}x | {c['reason']} |" if c.get("gain") else
              f"| {c['layer']} | {c['shape'][0]}x{c['shape'][1]} | {c['sparsity']:.1%} | {c['label']} | - | - | - | {c['reason']} |")
    for fqn, why in plan.get("not_candidates", {}).items():
        print(f"| {fqn} | | | dense | | | | {why} |")

    result = bench(out, backends=["torch-sparse"], threads=[int(t) for t in args.threads.split(",")], batch=1,
                   seq=args.seq, runs=args.runs, profile=False)
    data = result.data
    print(f"\n# machine: {machine_line(data['machine'])}")
    print("| model | threads | tokens | ONNX Runtime dense p50 ms | PyTorch dense p50 ms | torch-sparse p50 ms | "
          "vs ONNX Runtime dense | vs PyTorch dense |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for b, r in result.runs():
        if r["status"] != "ok":
            print(f"| minilm | {r['threads']} | {args.seq} | {r['status']}: {r.get('error')} |")
            continue
        v = r["variants"]
        p50 = lambda name: (v.get(name, {}).get("latency_ms") or {}).get("p50")  # noqa: E731
        print(f"| minilm {args.pattern} {args.sparsity:.0%} | {r['threads']} | {args.seq} | {ms(p50('onnx-dense'))} | "
              f"{ms(p50('dense'))} | {ms(p50('sparse'))} | {ratio_text((r.get('references') or {}).get('onnx-dense'))} "
              f"| {ratio_text(r.get('comparison'))} |")
    (out / "bench-torch-sparse.json").write_text(json.dumps(data, indent=1))
    print(f"# load avg {os.getloadavg()[0]:.2f} at end; full result in {out / 'bench-torch-sparse.json'}")

    if args.quality:
        from sparsecc.backends.torch_sparse import load_sparse_program
        from sparsecc.quality.evaluate import evaluate, reference_outputs
        from sparsecc.core.program import load_program

        ref = reference_outputs("lee-similarity", spec)
        dense = evaluate(load_program(out / "dense" / "program.pt2"), "lee-similarity", model=spec, reference_raw=ref)
        sparse = evaluate(load_sparse_program(out / "torch-sparse" / "program.pt2"), "lee-similarity", model=spec,
                          reference_raw=ref)
        print("\n| model | " + " | ".join(sparse.metrics) + " |")
        print("|---|" + "---:|" * len(sparse.metrics))
        for label, res in (("dense", dense), (f"{args.pattern} {args.sparsity:.0%} torch-sparse", sparse)):
            print(f"| {label} | " + " | ".join(f"{res.metrics[k]:.4f}" for k in sparse.metrics) + " |")


if __name__ == "__main__":
    main()

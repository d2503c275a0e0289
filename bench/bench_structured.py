"""Structured pruning: MACs, params and measured latency, pruned against dense, per backend and thread count.

For each model, compiles the dense model with a structured recipe (50% of the
conv channels / FFN neurons / attention heads removed by default) into a
bundle that carries its dense reference, then `sparsecc.bench` times dense
and pruned interleaved in one process per backend and thread count. Prints
one Markdown row per measurement, after a line naming the machine, library
versions and load average:

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_structured.py \\
        [--models resnet-w64,mobilenet-w32,efficientnet-lite0,minilm] [--recipe recipes/structured50.yaml] \\
        [--backends onnx,executorch] [--threads 1,2] [--runs 50] [--json out.json] [--bundles B1,B2]

"latency ratio" is pruned p50 / dense p50 (lower is faster; the 95% CI is
the bootstrap interval of the dense/pruned ratio, inverted); "realised" is
the share of the MAC reduction that became latency reduction:
(1 - latency ratio) / (1 - MACs ratio). MACs count the weight ops (conv,
linear, matmul with a weight) at the bundle's example shapes.

``resnet-w64`` and ``mobilenet-w32`` are the zoo's ResNet-style and
MobileNetV2-style architectures at ImageNet-like widths (64-128-256 and a
32-channel stem with a 1280-channel head) on 1×3×64×64 inputs, so that
kernel time, not per-op overhead, dominates; the zoo's own 32×32 versions
run in well under a millisecond.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from sparsecc.benchmarking import bench
from sparsecc.benchmarking.format import machine_line, ms


def _spec(name: str):
    from sparsecc.models import ModelSpec, get_model
    from sparsecc.models._common import randomize_batchnorm, generator, seeded
    from sparsecc.models.mobilenet import MobileNetV2
    from sparsecc.models.resnet import ResNet

    def wide(model: torch.nn.Module, label: str) -> ModelSpec:
        randomize_batchnorm(model, generator(1))
        x = torch.randn(1, 3, 64, 64, generator=generator(2))
        return ModelSpec(name=label, model=model.eval(), example_args=(x,), task="image-classification")

    if name == "resnet-w64":
        with seeded(0):
            return wide(ResNet(widths=(64, 128, 256), num_classes=1000), name)
    if name == "mobilenet-w32":
        with seeded(0):
            return wide(MobileNetV2(stem=32, last=1280, num_classes=1000), name)
    return get_model(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet-w64,mobilenet-w32,efficientnet-lite0,minilm")
    ap.add_argument("--recipe", default="recipes/structured50.yaml")
    ap.add_argument("--backends", default="onnx,executorch")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--keep", help="keep the bundles in this folder instead of a temporary one")
    ap.add_argument("--bundles", default="", help="existing structured bundles (comma-separated) instead of compiling")
    ap.add_argument("--json", help="also write the bench result to this file")
    args = ap.parse_args()
    from sparsecc.flows.compile import compile

    backends = args.backends.split(",")
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="sparsecc-structured-") as tmp:
        root = Path(args.keep or tmp)
        bundles = [Path(p) for p in args.bundles.split(",") if p]
        for model in ([] if bundles else args.models.split(",")):
            out = root / model
            print(f"# compiling {model} ...", flush=True)
            compile(_spec(model), args.recipe, out, targets=[b for b in backends if b != "torch"],
                    dense_reference=True, force=True)
            bundles.append(out)
        result = bench(bundles, backends=backends, threads=[int(t) for t in args.threads.split(",")],
                       runs=args.runs, profile=False)
    data = result.data
    print(f"# machine: {machine_line(data['machine'])}; load avg {load_start:.2f} before compiling, "
          f"{os.getloadavg()[0]:.2f} at the end; recipe {args.recipe}; {args.runs} interleaved rounds")
    print("| model | MACs ratio | params ratio | backend | threads | dense p50 ms | pruned p50 ms | latency ratio [95% CI] | MAC reduction realised |")
    print("|---|---:|---:|---|---:|---:|---:|---|---:|")
    for b, r in result.runs():
        st = b.get("structured") or {}
        macs, params = st.get("macs_ratio"), st.get("params_ratio")
        head = f"| {b['model']} | {macs:.3f} | {params:.3f} | {r['backend']} | {r['threads']} "
        if r["status"] != "ok":
            print(head + f"| | | {r['status']}: {(r.get('error') or '').splitlines()[0] if r.get('error') else ''} | |")
            continue
        d, s = r["variants"]["dense"], r["variants"]["sparse"]
        cmp = r.get("comparison") or {}
        lat = 1.0 / cmp["ratio"]
        lo, hi = (1.0 / cmp["ci95"][1], 1.0 / cmp["ci95"][0]) if cmp.get("ci95") else (float("nan"),) * 2
        realised = (1 - lat) / (1 - macs) if macs < 1 else float("nan")
        print(head + f"| {ms(d['latency_ms']['p50'])} | {ms(s['latency_ms']['p50'])} | {lat:.3f} [{lo:.3f}, {hi:.3f}] "
              f"| {realised:.0%} |")
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()

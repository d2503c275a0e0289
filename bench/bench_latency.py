"""Dense vs sparse latency per model, recipe, backend and thread count: the README's latency table.

Compiles each model with each recipe (dense reference included) into a
temporary bundle, runs `sparsecc.bench` on it, and prints one Markdown row
per measurement, after a line naming the machine and library versions.
Pass ``--bundles`` to benchmark existing bundles instead of compiling.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_latency.py \\
        [--models resnet,minilm,efficientnet-lite0] [--recipes recipes/unstructured50.yaml] \\
        [--backends onnx,executorch] [--threads 1,2] [--runs 200] [--json out.json] [--bundles B1,B2]

Ratios are dense p50 / sparse p50 with a paired bootstrap 95% CI; an
interval containing 1 reads "no measurable change". Absolute times drift
with machine load (printed at start and end); compare ratios.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from sparsecc.benchmarking import bench
from sparsecc.benchmarking.format import dims_text, machine_line, ms, ratio_text, recipe_text, size


def _compile(model: str, recipe: str, out: Path, targets: list[str]) -> Path:
    from sparsecc.flows.compile import compile
    from sparsecc.models import get_model

    compile(get_model(model), recipe, out, targets=targets, dense_reference=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet")
    ap.add_argument("--recipes", default="recipes/unstructured50.yaml")
    ap.add_argument("--backends", default="onnx,executorch")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--bundles", default="", help="existing bundle folders (comma-separated) instead of compiling")
    ap.add_argument("--json", help="also write the bench result to this file")
    args = ap.parse_args()
    backends = args.backends.split(",")
    targets = [b for b in backends if b in ("onnx", "executorch")]
    with tempfile.TemporaryDirectory(prefix="sparsecc-bench-") as tmp:
        bundles = [Path(b) for b in args.bundles.split(",") if b]
        if not bundles:
            for model in args.models.split(","):
                for i, recipe in enumerate(args.recipes.split(",")):
                    bundles.append(_compile(model, recipe, Path(tmp) / f"{model}-{i}", targets))
        result = bench(bundles, backends=backends, threads=[int(t) for t in args.threads.split(",")],
                       batch=args.batch, seq=args.seq, runs=args.runs, profile=False)
    data = result.data
    print(f"# machine: {machine_line(data['machine'])}")
    print("| model | recipe | backend | threads | dims | dense p50 ms | sparse p50 ms | dense→sparse speed | size (zstd) |")
    print("|---|---|---|---:|---|---:|---:|---|---|")
    for b, r in result.runs():
        if r["status"] != "ok":
            print(f"| {b['model']} | {recipe_text(b.get('recipe'))} | {r['backend']} | {r['threads']} | | | | {r['status']}: {r.get('error') or ''} | |")
            continue
        d, s = r["variants"].get("dense") or {}, r["variants"]["sparse"]
        print(f"| {b['model']} | {recipe_text(b.get('recipe'))} | {r['backend']} | {r['threads']} | {dims_text(r.get('dims'))} "
              f"| {ms((d.get('latency_ms') or {}).get('p50'))} | {ms(s['latency_ms']['p50'])} | {ratio_text(r.get('comparison'))} "
              f"| {size(d.get('zstd_bytes'))} → {size(s.get('zstd_bytes'))} |")
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()

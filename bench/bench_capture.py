"""Time torch.export alone vs sparsecc's passes on top of it, per model.

For each model, rounds alternate (export, then the sparsecc passes on a fresh
export) and the table shows medians: torch.export, then mask computation
(with analysis and planning), insertion, folding and verification (the
pipeline `sparsify(..., fold=True)` runs), and their sum as a share of export.

    .venv/bin/python bench/bench_capture.py [--models mlp,resnet,...] [--rounds 3] [--recipe recipes/2of4.yaml]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from sparsecc import capture, find_prunable_weights, load_recipe
from sparsecc.core.machine import machine_info
from sparsecc.models import REFERENCE_MODELS, get_model
from sparsecc.core.pass_infra import PassManager, TimingInstrument
from sparsecc.passes import ComputeMasksPass, FoldMasksPass, InsertMasksPass
from sparsecc.verify.verify_sparsity import VerifySparsityPass
from sparsecc.plan.recipe import plan_masks

STAGES = ("ComputeMasksPass", "InsertMasksPass", "FoldMasksPass", "VerifySparsityPass")


def bench_model(name: str, recipe, rounds: int) -> dict:
    spec = get_model(name)
    export_t, stage_t = [], {s: [] for s in STAGES}
    for _ in range(rounds):
        t0 = time.perf_counter()
        program = capture(spec.model, spec.example_args, spec.example_kwargs, spec.dynamic_shapes)
        export_t.append(time.perf_counter() - t0)
        timer = TimingInstrument()
        t0 = time.perf_counter()
        plan = plan_masks(recipe, find_prunable_weights(program))
        plan_t = time.perf_counter() - t0
        PassManager(
            [ComputeMasksPass(plan.specs), InsertMasksPass(), FoldMasksPass(), VerifySparsityPass()],
            [timer],
        )(program)
        per = {s: 0.0 for s in STAGES}
        for pass_name, t in timer.timings:
            if pass_name in per:
                per[pass_name] += t
        per["ComputeMasksPass"] += plan_t  # analysis + planning count as mask computation
        for s in STAGES:
            stage_t[s].append(per[s])
    med = {s: statistics.median(v) for s, v in stage_t.items()}
    export = statistics.median(export_t)
    passes = sum(med.values())
    return {
        "model": name,
        "params": sum(p.numel() for p in spec.model.parameters()),
        "layers": len(plan.specs),
        "export_s": export,
        **{s: med[s] for s in STAGES},
        "passes_s": passes,
        "overhead": passes / export,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join([*REFERENCE_MODELS, "minilm", "smollm2"]))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--recipe", default="recipes/2of4.yaml")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    torch.manual_seed(0)
    recipe = load_recipe(args.recipe)
    info = machine_info()
    print(f"# machine: {info['cpu']} ({info['cores']} cores, load {info['load_avg_1m']}), "
          f"torch {info['versions'].get('torch')}, recipe {args.recipe}, {args.rounds} rounds, medians")
    print("| model | params | sparse layers | torch.export | masks | insert | fold | verify | passes total | passes / export |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for name in args.models.split(","):
        r = bench_model(name, recipe, args.rounds)
        rows.append(r)
        print(f"| {name} | {r['params'] / 1e6:.2f}M | {r['layers']} | {r['export_s']:.2f} s | "
              f"{r['ComputeMasksPass']:.3f} s | {r['InsertMasksPass']:.3f} s | {r['FoldMasksPass']:.3f} s | "
              f"{r['VerifySparsityPass']:.3f} s | {r['passes_s']:.2f} s | {r['overhead']:.1%} |")
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()

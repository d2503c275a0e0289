"""Layer-wise budgets on a real model: the per-layer allocation of each method and its cost.

Captures the model, plans the recipe's layers (unstructured at ``--sparsity``),
collects Wanda's activation statistics on the model's calibration data when a
method needs them, and prints, per method, the time the allocation took and
then one row per layer (or per block, ``--by block``) with each method's
sparsity. Every method's total is checked against round(target x params).

    .venv/bin/python bench/bench_budgets.py [--model smollm2] [--methods erk,owl] [--sparsity 0.5]
        [--samples 32] [--seq-len 256] [--by layer|block] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from sparsecc import capture
from sparsecc.core.analyze import find_prunable_weights
from sparsecc.plan.budgets import allocate, block_of, needs_calibration, needs_stats, parse_budget
from sparsecc.plan.calibrate import CalibrationData, collect_stats
from sparsecc.data import calibration_inputs
from sparsecc.core.machine import machine_info
from sparsecc.models import get_model
from sparsecc.plan.recipe import load_recipe, plan_masks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--methods", default="erk,owl", help="comma-separated budget methods")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--samples", type=int, default=32, help="calibration batches (statistics, losses)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--by", choices=("layer", "block"), default="layer")
    ap.add_argument("--json", default="", help="also write every allocation here")
    args = ap.parse_args()

    info = machine_info()
    print(f"# {info['cpu']}, torch {info['versions'].get('torch')}; load average {os.getloadavg()[0]:.2f} at start")
    t0 = time.perf_counter()
    spec = get_model(args.model)
    program = capture(spec.model, spec.example_args, spec.example_kwargs, spec.dynamic_shapes)
    print(f"# {args.model}: loaded and captured in {time.perf_counter() - t0:.1f}s")
    analysis = find_prunable_weights(program)
    plan = plan_masks(load_recipe({"pattern": "unstructured", "sparsity": args.sparsity}), analysis)
    budgets = {m: parse_budget(m) for m in args.methods.split(",")}

    stats = data = None
    if any(needs_stats(b) or needs_calibration(b) for b in budgets.values()):
        t0 = time.perf_counter()
        data = CalibrationData(calibration_inputs(spec, args.samples, args.seq_len))
        if any(needs_stats(b) for b in budgets.values()):
            stats = collect_stats(program, data, [s.fqn for s in plan.specs])
        print(f"# calibration statistics ({args.samples} batches, seq_len {args.seq_len}): "
              f"{time.perf_counter() - t0:.1f}s")

    allocations = {}
    for name, b in budgets.items():
        a = allocate(plan, analysis, b, program=program, stats=stats, calibration=data)
        assert a.pruned == a.target_pruned, (name, a.pruned, a.target_pruned)
        allocations[name] = a
        print(f"# {name}: {a.seconds:.2f}s, {a.pruned} of {a.params} params pruned "
              f"(target {a.target_pruned}); load average {os.getloadavg()[0]:.2f}")

    names = list(allocations)
    first = allocations[names[0]]
    if args.by == "block":
        keys: dict[str, int] = {}
        for r in first.layers:
            keys.setdefault(block_of(r.fqn), 0)
            keys[block_of(r.fqn)] += r.params
        print("| block | params | " + " | ".join(names) + " |")
        print("|---|---:|" + "---:|" * len(names))
        for k, params in keys.items():
            cells = []
            for n in names:
                rows = [r for r in allocations[n].layers if block_of(r.fqn) == k]
                cells.append(f"{sum(r.pruned_params for r in rows) / params:.3f}")
            print(f"| {k} | {params} | " + " | ".join(cells) + " |")
    else:
        print("| layer | shape | " + " | ".join(f"{n} sparsity | {n} score" for n in names) + " |")
        print("|---|---|" + "---:|---:|" * len(names))
        shapes = {w.fqn: "x".join(map(str, w.shape)) for w in analysis.weights}
        for i, r in enumerate(first.layers):
            cells = []
            for n in names:
                row = allocations[n].layers[i]
                cells.append(f"{row.sparsity:.3f} | {'-' if row.score is None else f'{row.score:.4g}'}")
            print(f"| {r.layer} | {shapes[r.fqn]} | " + " | ".join(cells) + " |")
    for n in names:
        print(f"# {n} score: {allocations[n].score_name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({n: a.to_dict() for n, a in allocations.items()}, f, indent=1)


if __name__ == "__main__":
    main()

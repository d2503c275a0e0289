"""Quality and pruning time of the criteria on real pretrained models.

For each model, the dense model is evaluated once; then for each pattern and
criterion the captured program is pruned (`sparsecc.sparsify`, masks folded)
and evaluated with the same protocol (`sparsecc.evaluate`):

- SmolLM2-135M: perplexity on the evaluation half of lee_background (windows
  of 256 tokens, no overlap); calibration: 64 windows of 256 tokens from the
  calibration half;
- MiniLM: Spearman correlation of embedding cosines with the human ratings of
  the 50 Lee documents, and mean cosine to the dense embeddings; calibration:
  64 batches of 8 sentences from the first 150 lee_background documents.

Pruning time is wall time of `sparsify` (calibration, mask choice, weight
updates, folding and verification), on however many threads torch uses.

    .venv/bin/python bench/bench_quality.py [--models smollm2,minilm] [--criteria magnitude,wanda,sparsegpt]
        [--patterns 0.5,2:4,4:8] [--samples 64] [--seq-len 256] [--no-sequential] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from sparsecc import capture, sparsify
from sparsecc.plan.calibrate import CalibrationData
from sparsecc.plan.criteria import needs_calibration
from sparsecc.data import calibration_inputs
from sparsecc.quality.evaluate import EvalOptions, evaluate, reference_outputs
from sparsecc.core.machine import machine_info
from sparsecc.models import get_model

# model -> (task, metrics to show, calibration seq_len default)
TASKS = {
    "smollm2": ("perplexity", ("perplexity",), 256),
    "minilm": ("lee-similarity", ("spearman", "cosine_to_dense"), 128),
}


def _recipe(pattern: str, criterion: str, samples: int, seq_len: int, sequential: bool) -> dict:
    r: dict = {"criterion": criterion, "calibration": {"samples": samples, "seq_len": seq_len, "sequential": sequential}}
    if ":" in pattern or "x" in pattern:
        r["pattern"] = pattern
    else:
        r["pattern"], r["sparsity"] = "unstructured", float(pattern)
    return r


def _label(pattern: str) -> str:
    return pattern if (":" in pattern or "x" in pattern) else f"{float(pattern):.0%} unstructured"


def bench_model(name: str, criteria: list[str], patterns: list[str], samples: int, seq_len: int | None,
                sequential: bool, say, eval_windows: int | None = None) -> list[dict]:
    task, shown, default_len = TASKS[name]
    seq_len = seq_len or default_len
    spec = get_model(name)
    program = capture(spec.model, spec.example_args, spec.example_kwargs, spec.dynamic_shapes)
    t0 = time.perf_counter()
    data = CalibrationData(calibration_inputs(spec, samples, seq_len))
    say(f"{name}: {len(data)} calibration batches in {time.perf_counter() - t0:.1f}s")
    opts = EvalOptions(max_windows=eval_windows)
    ref = reference_outputs(task, spec, options=opts)
    dense = evaluate(spec.model, task, model=spec, reference_raw=ref, options=opts)
    rows = [{"model": name, "pattern": "dense", "criterion": "-", "prune_s": 0.0, **dense.metrics}]
    say(f"{name} dense: " + ", ".join(f"{k}={dense.metrics[k]:.4g}" for k in shown))
    for pattern in patterns:
        for criterion in criteria:
            recipe = _recipe(pattern, criterion, samples, seq_len, sequential)
            t0 = time.perf_counter()
            result = sparsify(program, recipe, fold=True,
                              calibration=data if needs_calibration(criterion) else None)
            prune_s = time.perf_counter() - t0
            metrics = evaluate(result.program, task, model=spec, reference_raw=ref, options=opts).metrics
            rows.append({"model": name, "pattern": _label(pattern), "criterion": criterion, "prune_s": prune_s,
                         "load": os.getloadavg()[0], **metrics})
            say(f"{name} {_label(pattern)} {criterion}: " + ", ".join(f"{k}={metrics[k]:.4g}" for k in shown)
                + f", pruned in {prune_s:.1f}s")
    return rows


def markdown(rows: list[dict]) -> str:
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        shown = TASKS[name][1]
        out.append(f"\n**{name}**\n")
        out.append("| pattern | criterion | " + " | ".join(shown) + " | pruning time (s) |")
        out.append("|---|---|" + "---:|" * (len(shown) + 1))
        for r in rows:
            if r["model"] == name:
                cells = " | ".join(f"{r[k]:.4g}" for k in shown)
                out.append(f"| {r['pattern']} | {r['criterion']} | {cells} | {r['prune_s']:.1f} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2,minilm")
    ap.add_argument("--criteria", default="magnitude,wanda,sparsegpt")
    ap.add_argument("--patterns", default="0.5,2:4,4:8", help="sparsity for unstructured, or N:M / RxC")
    ap.add_argument("--samples", type=int, default=64, help="calibration batches")
    ap.add_argument("--seq-len", type=int, default=None, help="calibration tokens per batch (default per model)")
    ap.add_argument("--no-sequential", action="store_true", help="collect all statistics in one dense pass")
    ap.add_argument("--eval-windows", type=int, default=None,
                    help="perplexity on the first N evaluation windows only (default: all)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    info = machine_info()
    print(json.dumps({k: info[k] for k in ("cpu", "cores", "python", "versions") if k in info}))
    print(f"torch threads: {torch.get_num_threads()}, load average: {os.getloadavg()[0]:.2f}")

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    rows = []
    for name in args.models.split(","):
        if name not in TASKS:
            ap.error(f"unknown model {name!r}; known: {', '.join(TASKS)}")
        rows += bench_model(name, args.criteria.split(","), args.patterns.split(","), args.samples, args.seq_len,
                            not args.no_sequential, say, args.eval_windows)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Quality after structured pruning, before and after a short distillation on bundled data.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/quality_structured.py [--models efficientnet-lite0,minilm] [--steps 150]

- EfficientNet-Lite0: 30% of the channels removed (BatchNorm-scale importance,
  kept counts rounded to multiples of 8, the stem kept whole); distilled
  (KL on the logits) on random crops of the calibration photos; scored by
  top-1 / top-5 agreement with the dense model on the evaluation photos and
  their crops (`sparsecc.evaluate`, task photo-agreement).
- MiniLM: 50% of the FFN neurons removed (L2 importance); distilled (cosine +
  relative MSE on the last hidden state) on calibration sentences of
  lee_background; scored by the mean cosine of the sentence embeddings to the
  dense model's and the correlation with human ratings on lee.cor (task
  lee-similarity).

Neither distillation sees the evaluation data. Prints one Markdown row per model.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from sparsecc import capture
from sparsecc.datasets import calibration_inputs
from sparsecc.evaluate import evaluate, reference_outputs
from sparsecc.machine import machine_info
from sparsecc.models import get_model
from sparsecc.recover import distill
from sparsecc.structured import StructuredOptions, prune_structured

SETUPS = {
    "efficientnet-lite0": dict(
        options=StructuredOptions(ratio=0.3, units=("channel",), criterion="bn_scale", round_to=8, protect=("_conv_stem",)),
        task="photo-agreement", metrics=("top1_agreement", "top5_agreement", "mean_kl"),
        batches=dict(n=48, batch_size=2), lr=1e-4,
    ),
    "minilm": dict(
        options=StructuredOptions(ratio=0.5, units=("channel",), criterion="l2"),
        task="lee-similarity", metrics=("cosine_to_dense", "spearman", "pearson"),
        batches=dict(n=18, batch_size=8), lr=2e-4,
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="efficientnet-lite0,minilm")
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()
    torch.manual_seed(0)
    m = machine_info()
    print(f"# machine: {m.get('cpu', '?')}, load avg {os.getloadavg()[0]:.2f}; {args.steps} distillation steps")
    print("| model | removed | MACs ratio | params ratio | metric | dense | pruned | pruned + distilled | distill time |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|")
    for name in args.models.split(","):
        setup = SETUPS[name]
        spec = get_model(name)
        program = capture(spec.model, spec.example_args, spec.example_kwargs, spec.dynamic_shapes)
        result = prune_structured(program, setup["options"], verify_inputs=[(spec.example_args, spec.example_kwargs)])
        summary = result.report["summary"]
        ref = reference_outputs(setup["task"], spec)
        dense = evaluate(program, setup["task"], model=spec, reference_raw=ref).metrics
        before = evaluate(result.program, setup["task"], model=spec, reference_raw=ref).metrics
        batches = calibration_inputs(spec, **setup["batches"])
        t0 = time.perf_counter()
        trained = distill(result.program, program, batches, steps=args.steps, lr=setup["lr"], task=spec.task)
        seconds = time.perf_counter() - t0
        after = evaluate(trained.program, setup["task"], model=spec, reference_raw=ref).metrics
        o = setup["options"]
        removed = f"{o.ratio:.0%} of {'/'.join(o.units)} units ({o.criterion})"
        for metric in setup["metrics"]:
            print(f"| {name} | {removed} | {summary['macs_ratio']:.3f} | {summary['params_ratio']:.3f} | {metric} "
                  f"| {dense.get(metric, float('nan')):.4f} | {before.get(metric, float('nan')):.4f} | {after.get(metric, float('nan')):.4f} | {seconds:.0f} s |",
                  flush=True)
        print(f"<!-- {name}: distillation loss {trained.first_loss:.4f} -> {trained.last_loss:.4f} -->", flush=True)


if __name__ == "__main__":
    main()

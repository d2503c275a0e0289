"""Quality after structured pruning, before and after a short distillation on bundled data.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/quality_structured.py [--models efficientnet-lite0,minilm] [--steps N]

- EfficientNet-Lite0: 30% of the expanded channels of the MBConv blocks
  removed, ranked across blocks by ``bn_energy`` (the share of the projection
  conv's normalised output each channel carries, predicted from the
  BatchNorm before it: no data), kept counts rounded to multiples of 8, the
  residual stream between blocks whole; the predicted mean and variance of
  the removed channels folded into the BatchNorm after each projection
  (``compensate``); then only the BatchNorm scales and shifts distilled (KL on
  the logits) on random crops of the calibration photos. Scored by top-1 /
  top-5 agreement with the dense model on the evaluation photos and their
  crops (`sparsecc.evaluate`, task photo-agreement). ``--baseline`` adds the
  previous recipe as a row: L2 per block, least-squares repair and BatchNorm
  re-estimation on the calibration crops, every weight distilled.
- MiniLM: 50% of the FFN neurons removed (L2 importance); each FFN output
  projection repaired by least squares on the calibration sentences; distilled (cosine +
  relative MSE on the last hidden state) on calibration sentences of
  lee_background; scored by the mean cosine of the sentence embeddings to the
  dense model's and the correlation with human ratings on lee.cor (task
  lee-similarity).

Neither distillation sees the evaluation data. Prints one Markdown row per model.

``--sweep`` instead prints, for EfficientNet-Lite0 without distillation, the
ratio / scope trade-off of ``bn_energy`` with ``compensate`` (MACs against
agreement) and, for scale, the dense model with its weights rounded per
output channel to int8 and int6.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import torch

from sparsecc import capture
from sparsecc.data import calibration_inputs
from sparsecc.quality.evaluate import evaluate, reference_outputs
from sparsecc.core.machine import machine_info
from sparsecc.models import get_model
from sparsecc.recovery.distill import distill, recalibrate_batchnorm
from sparsecc.flows.structured import prune_structured
from sparsecc.plan.structured_options import StructuredOptions

SETUPS = {
    "efficientnet-lite0": dict(
        options=StructuredOptions(ratio=0.3, units=("channel",), criterion="bn_energy", scope="global", round_to=8,
                                  include=("out:*._expand_conv",), compensate=True),
        task="photo-agreement", metrics=("top1_agreement", "top1_agreement_sure", "top5_agreement", "kl_to_dense"),
        batches=dict(n=96, batch_size=4), lr=3e-4, steps=100, train=("*_bn*",),
    ),
    "efficientnet-lite0-l2": dict(
        # the expanded (depthwise) channels of every MBConv block and the head: the residual stream stays whole
        options=StructuredOptions(ratio=0.3, units=("channel",), criterion="l2", round_to=8,
                                  include=("out:*._expand_conv", "out:_conv_head")),
        task="photo-agreement", metrics=("top1_agreement", "top1_agreement_sure", "top5_agreement", "kl_to_dense"),
        batches=dict(n=48, batch_size=2), lr=3e-4, steps=300, reconstruct=True, recalibrate=True,
    ),
    "minilm": dict(
        options=StructuredOptions(ratio=0.5, units=("channel",), criterion="l2"),
        task="lee-similarity", metrics=("cosine_to_dense", "spearman", "pearson"),
        batches=dict(n=60, batch_size=8), lr=5e-5, steps=600, reconstruct=True,
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="efficientnet-lite0,minilm")
    ap.add_argument("--steps", type=int, help="distillation steps (default: per model: 100, 600)")
    ap.add_argument("--baseline", action="store_true",
                    help="also run efficientnet-lite0-l2: the L2 / least-squares / all-weights recipe")
    ap.add_argument("--lr", type=float, help="distillation learning rate (default: per model)")
    ap.add_argument("--sweep", action="store_true",
                    help="EfficientNet-Lite0 only: ratio / scope trade-off and int8 / int6 weight rounding, no distillation")
    args = ap.parse_args()
    torch.manual_seed(0)
    m = machine_info()
    print(f"# machine: {m.get('cpu', '?')}, load avg {os.getloadavg()[0]:.2f}")
    if args.sweep:
        sweep()
        return
    names = args.models.split(",")
    if args.baseline and "efficientnet-lite0" in names:
        names.insert(names.index("efficientnet-lite0") + 1, "efficientnet-lite0-l2")
    print("| model | removed | MACs ratio | params ratio | metric | dense | pruned (+ repair) | + BN recalibrated | + distilled | distill |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for name in names:
        setup = SETUPS[name]
        spec = get_model(name.removesuffix("-l2"))
        program = capture(spec.model, spec.example_args, spec.example_kwargs, spec.dynamic_shapes)
        batches = calibration_inputs(spec, **setup["batches"])
        result = prune_structured(program, setup["options"], verify_inputs=[(spec.example_args, spec.example_kwargs)],
                                  calibration=batches, reconstruct=setup.get("reconstruct", False))
        summary = result.report["summary"]
        ref = reference_outputs(setup["task"], spec)
        dense = evaluate(program, setup["task"], model=spec, reference_raw=ref).metrics
        before = evaluate(result.program, setup["task"], model=spec, reference_raw=ref).metrics
        student, recal = result.program, {}
        if setup.get("recalibrate"):
            student, _ = recalibrate_batchnorm(student, batches)
            recal = evaluate(student, setup["task"], model=spec, reference_raw=ref).metrics
        t0 = time.perf_counter()
        steps = args.steps or setup["steps"]
        trained = distill(student, program, batches, steps=steps, lr=args.lr or setup["lr"], task=spec.task,
                          train=setup.get("train", ()))
        seconds = time.perf_counter() - t0
        after = evaluate(trained.program, setup["task"], model=spec, reference_raw=ref).metrics
        o = setup["options"]
        removed = f"{o.ratio:.0%} of {'/'.join(o.units)} units ({o.criterion}, {o.scope})"
        trained_what = "norms" if setup.get("train") else "all"
        for metric in setup["metrics"]:
            print(f"| {name} | {removed} | {summary['macs_ratio']:.3f} | {summary['params_ratio']:.3f} | {metric} "
                  f"| {dense.get(metric, float('nan')):.4f} | {before.get(metric, float('nan')):.4f} "
                  f"| {recal.get(metric, float('nan')):.4f} | {after.get(metric, float('nan')):.4f} | {steps} steps ({trained_what}), {seconds:.0f} s |",
                  flush=True)
        print(f"<!-- {name}: distillation loss {trained.first_loss:.4f} -> {trained.last_loss:.4f} -->", flush=True)


def _rounded_weights(program: Any, bits: int) -> Any:
    """``program`` with every conv / linear weight rounded to ``bits`` per output channel (symmetric)."""
    from sparsecc.core.analyze import find_prunable_weights
    from sparsecc.core.program import ProgramEditor

    editor = ProgramEditor(program)
    levels = 2 ** (bits - 1) - 1
    for w in find_prunable_weights(program).weights:
        t = program.state_dict[w.fqn].detach()
        scale = t.abs().movedim(w.output_axis, 0).flatten(1).amax(1).clamp_min(1e-12) / levels
        shape = [1] * t.dim()
        shape[w.output_axis] = -1
        editor.set_tensor(w.fqn, (t / scale.view(shape)).round() * scale.view(shape))
    return editor.finish()


def sweep() -> None:
    spec = get_model("efficientnet-lite0")
    program = capture(spec.model, spec.example_args, spec.example_kwargs, spec.dynamic_shapes)
    ref = reference_outputs("photo-agreement", spec)
    print("| EfficientNet-Lite0 | MACs ratio | top-1 agreement | top-1, sure views | top-5 | KL to dense |")
    print("|---|---:|---:|---:|---:|---:|")

    def row(label: str, prog: Any, macs: float) -> None:
        r = evaluate(prog, "photo-agreement", model=spec, reference_raw=ref).metrics
        print(f"| {label} | {macs:.3f} | {r['top1_agreement']:.3f} | {r.get('top1_agreement_sure', float('nan')):.3f} "
              f"| {r['top5_agreement']:.3f} | {r['kl_to_dense']:.3f} |", flush=True)

    for bits in (8, 6):
        row(f"dense, weights rounded to int{bits} per output channel", _rounded_weights(program, bits), 1.0)
    for ratio, scope in ((0.1, "global"), (0.3, "global"), (0.4, "global"), (0.5, "global"), (0.3, "layer")):
        options = StructuredOptions(ratio=ratio, units=("channel",), criterion="bn_energy", scope=scope, round_to=8,
                                    include=("out:*._expand_conv",), compensate=True)
        result = prune_structured(program, options)
        row(f"{ratio:.0%} of expanded channels, bn_energy, {scope}, compensated", result.program,
            result.report["summary"]["macs_ratio"])
    for compensate in (True, False):
        options = StructuredOptions(ratio=0.3, units=("channel",), criterion="l2", round_to=8,
                                    include=("out:*._expand_conv",), compensate=compensate)
        result = prune_structured(program, options)
        row(f"30% of expanded channels, l2, layer{', compensated' if compensate else ''}", result.program,
            result.report["summary"]["macs_ratio"])


if __name__ == "__main__":
    main()

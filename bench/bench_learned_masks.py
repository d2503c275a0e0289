"""Learned N:M masks (MaskLLM) and SR-STE against the one-shot SparseGPT mask.

Per configuration: capture the zoo model, prune it one-shot to 2:4 with
SparseGPT (calibrated on 64 calibration batches), evaluate, then run each
``--methods`` stage from that one-shot program (not chained) through
`sparsecc.flows.recover` (every weight verified after the stage), and evaluate
again with the README's protocol (`sparsecc.quality.evaluate`). CPU time
(process time, all threads), wall time and training tokens are recorded per
stage; results go to ``bench/results/learned-masks-<config>.json`` after
every stage.

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python bench/bench_learned_masks.py --configs minilm-2:4 \\
        --methods learned-mask --steps 200

Data: calibration and training use the model's calibration data (MiniLM: the
sentences of the first 150 ``lee_background`` documents; SmolLM2: windows of
the first half of ``lee_background``, or ``--data prose`` for those plus the
Wikipedia prose of `sparsecc.data.prose`); evaluation uses ``lee.cor`` +
human ratings (MiniLM) and the second half of ``lee_background`` (SmolLM2),
which training never sees.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS: dict[str, dict[str, Any]] = {
    "minilm-2:4": {"model": "minilm", "task": "lee-similarity", "metric": "cosine_to_dense", "target": 0.97},
    "smollm2-2:4": {"model": "smollm2", "task": "perplexity", "metric": "perplexity", "target": 58.0},
}
RECIPE = {"pattern": "2:4", "criterion": "sparsegpt"}

from bench_recovery import Clock, machine, run_configs  # noqa: E402  (the same records and clock)


def stage_options(method: str, args: argparse.Namespace):
    from sparsecc.plan.recovery_options import RecoveryOptions

    common = dict(steps=args.steps, samples=args.samples, batch_size=args.batch_size, data=args.data,
                  seq_len=args.seq_len, temperature=args.temperature, seed=args.seed)
    if method == "learned-mask":
        return RecoveryOptions("learned-mask", lr=args.lr, **common, extra={
            "mask_lr": args.mask_lr, "prior_strength": args.prior_strength, "tau": [args.tau0, args.tau1],
            "scale": [args.scale0, args.scale1]})
    if method == "learned-mask-joint":
        return RecoveryOptions("learned-mask", lr=args.lr, **common, extra={
            "mask_lr": args.mask_lr, "prior_strength": args.prior_strength, "tau": [args.tau0, args.tau1],
            "scale": [args.scale0, args.scale1], "train_weights": True, "weight_reg": args.weight_reg})
    if method in ("sr-ste", "pgf"):
        return RecoveryOptions("sr-ste", lr=args.lr, **common, extra={"variant": method})
    raise SystemExit(f"unknown method {method!r}; use learned-mask, learned-mask-joint, sr-ste, pgf")


def run_config(name: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from sparsecc.core.capture import capture
    from sparsecc.flows.recover import recover
    from sparsecc.flows.sparsify import sparsify
    from sparsecc.models import get_model
    from sparsecc.plan.calibrate import calibration_for
    from sparsecc.quality.evaluate import EvalOptions, evaluate, reference_outputs

    cfg = CONFIGS[name]
    spec = get_model(cfg["model"])
    record: dict[str, Any] = {"config": name, "model": cfg["model"], "recipe": RECIPE, "task": cfg["task"],
                              "metric": cfg["metric"], "target": cfg["target"], "machine": machine(),
                              "command": " ".join(sys.argv), "stages": []}
    opts = EvalOptions(max_windows=args.eval_windows if cfg["task"] == "perplexity" else None)

    def save() -> None:
        out.write_text(json.dumps(record, indent=2, default=str))

    def log(msg: str) -> None:
        print(f"[{name} {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def score(program: Any, ref_raw: Any) -> dict[str, float]:
        res = evaluate(program, cfg["task"], model=spec, reference=None if ref_raw is None else "auto",
                       reference_raw=ref_raw, options=opts)
        return {k: float(v) for k, v in res.metrics.items()}

    dense = capture(spec.model, spec.example_args, spec.example_kwargs, spec.dynamic_shapes)
    ref_raw = None if cfg["task"] == "perplexity" else reference_outputs(cfg["task"], spec, options=EvalOptions())
    with Clock() as c:
        cal = calibration_for(spec, 64)
        sparse = sparsify(dense, RECIPE, fold=True, calibration=cal, model_name=cfg["model"]).program
    m = score(sparse, ref_raw)
    record["data"] = {"calibration": "64 calibration batches (sparsecc.data.calibration_inputs)",
                      "training": f"recovery data '{args.data}' ({args.samples} samples)",
                      "evaluation": cfg["task"] + " protocol (README)"}
    record["stages"].append({"stage": "one-shot sparsegpt", "metrics": m, "cpu_s": c.cpu, "wall_s": c.wall})
    log(f"one-shot {m} ({c.wall:.0f}s)")
    save()
    for method in args.methods:
        o = stage_options(method, args)
        with Clock() as c:
            run = recover(sparse, dense, [o], spec=spec, progress=log if args.verbose else None)
        m = score(run.program, ref_raw)
        rec = run.records[0]
        record["stages"].append({"stage": method, "metrics": m, "cpu_s": c.cpu, "wall_s": c.wall,
                                 "tokens": rec["tokens"], "steps": rec["steps"], "loss_before": rec["loss_before"],
                                 "loss_after": rec["loss_after"], "data": rec["data"], "details": rec,
                                 "options": rec["options"]})
        log(f"{method} {m} ({c.wall:.0f}s wall, {c.cpu:.0f}s cpu, {rec['tokens']} tokens, "
            f"loss {rec['loss_before']:.4g} -> {rec['loss_after']:.4g})")
        save()
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="minilm-2:4", help=f"comma-separated: {', '.join(CONFIGS)}")
    p.add_argument("--methods", default="learned-mask", help="learned-mask, learned-mask-joint, sr-ste, pgf")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--samples", type=int, default=256, help="training samples (sentences, LM windows)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--data", default="calibration", help="calibration, or prose (sparsecc.data.prose)")
    p.add_argument("--lr", type=float, default=1e-4, help="weight learning rate (joint, sr-ste)")
    p.add_argument("--mask-lr", type=float, default=0.05)
    p.add_argument("--prior-strength", type=float, default=3.0)
    p.add_argument("--tau0", type=float, default=2.0)
    p.add_argument("--tau1", type=float, default=0.05)
    p.add_argument("--scale0", type=float, default=1.0)
    p.add_argument("--scale1", type=float, default=20.0)
    p.add_argument("--weight-reg", type=float, default=1e-2)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-windows", type=int, default=40, help="perplexity windows (README: 40)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--verbose", action="store_true", help="print training progress")
    p.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    run_configs(p, args, CONFIGS, run_config, "learned-masks-{}.json")


if __name__ == "__main__":
    main()

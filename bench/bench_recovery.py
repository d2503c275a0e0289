"""Quality after one-shot pruning, then after reconstruction, then after distillation.

Per configuration: capture the zoo model, prune it one-shot (SparseGPT by
default, calibrated on the model's calibration data), then run the recovery
stages one after the other on the model's calibration/training data
(`sparsecc.flows.recover`; never the evaluation data), and evaluate after each
stage with the README's protocol (`sparsecc.quality.evaluate`). CPU time
(process time, all threads), wall time and training tokens are recorded per
stage. Results go to ``bench/results/recovery-<config>.json`` after every stage.

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python bench/bench_recovery.py --configs minilm-2:4 \\
        --distill-steps 200

Configurations: minilm-2:4, minilm-8x8-80, minilm-ffn50 and minilm-ffn30 (structured:
half / 30% of the FFN neurons removed; lee-similarity, cosine to dense),
smollm2-2:4 (perplexity on the first ``--eval-windows`` windows of the
evaluation half), efficientnet-2:4 (photo-agreement, top-1 agreement on the
views the dense model is sure of) and efficientnet-2:4-convs (the same with
the classifier left dense).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS: dict[str, dict[str, Any]] = {
    "minilm-2:4": {"model": "minilm", "recipe": {"pattern": "2:4", "criterion": "sparsegpt"},
                   "task": "lee-similarity", "metric": "cosine_to_dense", "target": 0.97},
    "minilm-8x8-80": {"model": "minilm", "recipe": {"pattern": "8x8", "sparsity": 0.8, "criterion": "sparsegpt"},
                      "task": "lee-similarity", "metric": "cosine_to_dense", "target": 0.95},
    "smollm2-2:4": {"model": "smollm2", "recipe": {"pattern": "2:4", "criterion": "sparsegpt"},
                    "task": "perplexity", "metric": "perplexity", "target": 58.0},
    "efficientnet-2:4": {"model": "efficientnet-lite0", "recipe": {"pattern": "2:4", "criterion": "sparsegpt"},
                         "task": "photo-agreement", "metric": "top1_agreement_sure", "target": 0.9},
    # the same with the classifier dense: 1.28 M of the model's ~385 M multiply-adds at 224 px (0.3%), but
    # the layer whose every output is a class score
    "efficientnet-2:4-convs": {"model": "efficientnet-lite0",
                               "recipe": {"pattern": "2:4", "criterion": "sparsegpt", "layers": {"exclude": ["_fc"]}},
                               "task": "photo-agreement", "metric": "top1_agreement_sure", "target": 0.9},
    # structured: half / 30% of every FFN's neurons removed (a smaller dense model), least-squares repaired
    "minilm-ffn50": {"model": "minilm", "recipe": {"structured": {"ratio": 0.5, "units": ["channel"], "criterion": "l2"}},
                     "task": "lee-similarity", "metric": "cosine_to_dense", "target": 0.95},
    "minilm-ffn30": {"model": "minilm", "recipe": {"structured": {"ratio": 0.3, "units": ["channel"], "criterion": "l2"}},
                     "task": "lee-similarity", "metric": "cosine_to_dense", "target": 0.95},
}


def machine() -> dict[str, Any]:
    from sparsecc.core.machine import machine_info

    info = dict(machine_info())
    info.update({"python": platform.python_version(), "torch": torch.__version__,
                 "threads": torch.get_num_threads(), "load_avg": os.getloadavg()})
    return info


class Clock:
    """Wall and process (CPU, all threads) seconds of one stage."""

    def __enter__(self) -> "Clock":
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def evaluate(program: Any, cfg: dict, spec: Any, ref_raw: Any, args: argparse.Namespace) -> dict[str, float]:
    from sparsecc.quality.evaluate import EvalOptions, evaluate as run

    opts = EvalOptions(max_windows=args.eval_windows if cfg["task"] == "perplexity" else None)
    res = run(program, cfg["task"], model=spec, reference=None if ref_raw is None else "auto",
              reference_raw=ref_raw, options=opts)
    return {k: float(v) for k, v in res.metrics.items()}


def run_config(name: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from sparsecc.core.capture import capture
    from sparsecc.core.program import load_program, save_program
    from sparsecc.flows.recover import recover
    from sparsecc.flows.sparsify import sparsify
    from sparsecc.models import get_model
    from sparsecc.plan.calibrate import calibration_for
    from sparsecc.plan.recovery_options import RecoveryOptions
    from sparsecc.quality.evaluate import EvalOptions, reference_outputs

    cfg = CONFIGS[name]
    spec = get_model(cfg["model"])
    record: dict[str, Any] = {"config": name, "model": cfg["model"], "recipe": cfg["recipe"], "task": cfg["task"],
                              "metric": cfg["metric"], "target": cfg["target"], "machine": machine(),
                              "command": " ".join(sys.argv), "stages": []}

    def save() -> None:
        out.write_text(json.dumps(record, indent=2, default=str))

    def log(msg: str) -> None:
        print(f"[{name} {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    program = capture(spec.model, spec.example_args, spec.example_kwargs, spec.dynamic_shapes)
    ref_raw = None
    if cfg["task"] != "perplexity":
        ref_raw = reference_outputs(cfg["task"], spec, options=EvalOptions())
    elif args.dense:
        with Clock() as c:
            m = evaluate(program, cfg, spec, None, args)
        record["stages"].append({"stage": "dense", "metrics": m, "eval_wall_s": c.wall})
        log(f"dense {m}")
    cal_samples = 64
    cache = Path(args.cache_dir) / f"oneshot-{name.replace(':', 'of')}.pt2" if args.cache_dir else None
    with Clock() as c:
        cal = calibration_for(spec, cal_samples)
        if cache is not None and cache.exists():  # the same one-shot program as an earlier run
            sparse = load_program(cache)
            log(f"one-shot program loaded from {cache} (its pruning time is not measured again)")
        elif "structured" in cfg["recipe"]:  # channels removed, the projections after them repaired
            from sparsecc.flows.structured import prune_structured
            from sparsecc.plan.recipe import load_recipe

            sparse = prune_structured(program, load_recipe(cfg["recipe"]).structured, calibration=cal.batches,
                                      reconstruct=True).program
        else:
            sparse = sparsify(program, cfg["recipe"], fold=True, calibration=cal, model_name=cfg["model"]).program
        if cache is not None and not cache.exists():
            cache.parent.mkdir(parents=True, exist_ok=True)
            save_program(sparse, cache)
    if args.start:  # go on from an earlier stage's program (its masks are the one-shot ones)
        sparse = load_program(args.start)
        record["start"] = args.start
        log(f"recovery starts from {args.start}")
    m = evaluate(sparse, cfg, spec, ref_raw, args) if not args.skip_oneshot_eval else {}
    record["data"] = {"calibration": f"{cal_samples} calibration batches (sparsecc.data.calibration_inputs)",
                      "training": f"recovery data '{args.data}' ({args.samples} samples)",
                      "evaluation": cfg["task"] + " protocol (README)"}
    record["stages"].append({"stage": "one-shot", "metrics": m, "cpu_s": c.cpu, "wall_s": c.wall,
                             "tokens": sum(int(t.numel()) for b in cal.batches for t in b[1].values()
                                           if isinstance(t, torch.Tensor) and not t.is_floating_point())})
    log(f"one-shot {m} ({c.wall:.0f}s)")
    save()
    stages = [RecoveryOptions("reconstruct", samples=args.samples, batch_size=args.batch_size, data=args.data,
                              seq_len=args.seq_len,
                              extra={"damp": args.damp, "undo": args.undo, "cg_iters": args.cg_iters,
                                     **({"ridge_to": args.ridge_to} if args.ridge_to else {}),
                                     **({"loss_batches": args.loss_batches} if args.loss_batches else {})})]
    if args.block_steps:
        stages.append(RecoveryOptions("block-tune", steps=args.block_steps, lr=args.block_lr, samples=args.samples,
                                      batch_size=args.batch_size, data=args.data, seq_len=args.seq_len,
                                      extra={"train": args.block_train, "undo": args.block_undo,
                                             "normalize": args.block_normalize,
                                             **({"loss_batches": args.loss_batches} if args.loss_batches else {})}))
    if args.distill_steps:
        stages.append(RecoveryOptions("distill", steps=args.distill_steps, lr=args.lr, samples=args.samples,
                                      batch_size=args.batch_size, data=args.data, seq_len=args.seq_len,
                                      temperature=args.temperature,
                                      extra={**{k: v for k, v in (("hidden", args.hidden),
                                                                   ("hidden_weight", args.hidden_weight),
                                                                   ("lr_schedule", args.lr_schedule),
                                                                   ("warmup", args.warmup),
                                                                   ("train", args.train),
                                                                   ("pooled", args.pooled)) if v},
                                             **({"mask_padding": False} if args.no_mask_padding else {})}))
    current = sparse
    for opts in stages:
        if opts.method not in args.methods:
            continue
        with Clock() as c:
            run = recover(current, program, [opts], spec=spec, progress=log)
        current = run.program
        m = evaluate(current, cfg, spec, ref_raw, args)
        rec = run.records[0]
        record["stages"].append({"stage": opts.method, "metrics": m, "cpu_s": c.cpu, "wall_s": c.wall,
                                 "tokens": rec["tokens"], "steps": rec["steps"], "loss_before": rec["loss_before"],
                                 "loss_after": rec["loss_after"], "data": rec["data"],
                                 "options": rec["options"]})
        log(f"{opts.method} {m} ({c.wall:.0f}s, {rec['tokens']} tokens)")
        if cache is not None:  # the recovered program, for bench_frontier.py --program
            tag = f"-{args.tag}" if args.tag else ""
            stage_file = cache.with_name(f"{opts.method}-{name.replace(':', 'of')}{tag}.pt2")
            save_program(current, stage_file)
            record["stages"][-1]["program"] = str(stage_file)
        save()
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="minilm-2:4", help=f"comma-separated: {', '.join(CONFIGS)}")
    p.add_argument("--methods", default="reconstruct,distill", help="recovery stages to run, in this order")
    p.add_argument("--samples", type=int, default=64, help="training samples (LM windows, sentences, images)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--data", default="calibration", help="training data (sparsecc.flows.recover)")
    p.add_argument("--start", default=None,
                   help="start the stages from this saved program (e.g. a reconstructed one from --cache-dir) "
                        "instead of the one-shot program")
    p.add_argument("--damp", type=float, default=0.01, help="reconstruction ridge, relative")
    p.add_argument("--ridge-to", choices=("one-shot", "zero"), default=None,
                   help="reconstruction: what the ridge pulls the kept weights towards (the method's default "
                        "when omitted)")
    p.add_argument("--undo", type=float, default=0.0,
                   help="reconstruction target Wd (undo Xd + (1 - undo) Xs): 1 undoes the earlier layers' error, "
                        "0 keeps SparseGPT's objective (sparsecc.recovery.reconstruct)")
    p.add_argument("--cg-iters", type=int, default=20, help="reconstruction: conjugate-gradient steps")
    p.add_argument("--loss-batches", type=int, default=0, help="reconstruction: report its loss on N batches")
    p.add_argument("--block-steps", type=int, default=0,
                   help="block-tune: Adam steps per block (0: no block-tune stage; sparsecc.recovery.block_tune)")
    p.add_argument("--block-lr", type=float, default=1e-4, help="block-tune: learning rate")
    p.add_argument("--block-train", default="all", choices=("all", "masked"),
                   help="block-tune: the block's parameters to train")
    p.add_argument("--block-normalize", default="token", choices=("token", "total"),
                   help="block-tune: each token's error against its own norm, or the whole output's")
    p.add_argument("--block-undo", type=float, default=1.0, help="block-tune: target undo (1: the dense block "
                   "on dense inputs)")
    p.add_argument("--distill-steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--hidden", default="", help="distill: also match hidden states at these points "
                   "(auto, norm, linear; sparsecc.recovery.hidden)")
    p.add_argument("--hidden-weight", type=float, default=0.0, help="distill: weight of the hidden-state loss (1)")
    p.add_argument("--lr-schedule", default="", help="distill: constant (default) or cosine")
    p.add_argument("--train", type=lambda v: [g for g in v.split(",") if g], default=None,
                   help="distill: train only the parameters matching these comma-separated globs (e.g. '*_bn*')")
    p.add_argument("--warmup", type=int, default=0, help="distill: linear warm-up steps")
    p.add_argument("--no-mask-padding", action="store_true",
                   help="distill: also match the teacher at padded positions (sparsecc.recovery.outputs.token_mask)")
    p.add_argument("--pooled", type=float, default=0.0,
                   help="distill: weight of the mean-pooled embedding's cosine in the loss (sentence encoders)")
    p.add_argument("--tag", default="", help="suffix of the result and cached program names")
    p.add_argument("--eval-windows", type=int, default=40, help="perplexity windows (README: 40)")
    p.add_argument("--skip-oneshot-eval", action="store_true", help="do not evaluate the one-shot program again")
    p.add_argument("--dense", action="store_true", help="also evaluate the dense model (perplexity)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    p.add_argument("--cache-dir", default="", help="keep / reuse the one-shot program here, and write each "
                   "recovered stage's program beside it (<method>-<config>.pt2)")
    args = p.parse_args(argv)
    run_configs(p, args, CONFIGS, run_config, f"recovery-{{}}{'-' + args.tag if args.tag else ''}.json")


def run_configs(p: argparse.ArgumentParser, args: argparse.Namespace, configs: dict[str, Any],
                run_config: Callable[[str, argparse.Namespace, Path], dict[str, Any]], out_name: str) -> None:
    """Run ``run_config`` for each of ``args.configs`` (comma-separated names of ``configs``), writing
    ``args.out_dir / out_name.format(name)`` (':' spelt 'of'), and print one line per stage."""
    args.methods = args.methods.split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(machine(), default=str))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.configs.split(","):
        if name not in configs:
            p.error(f"unknown config {name!r}; known: {', '.join(configs)}")
        out = out_dir / out_name.format(name.replace(":", "of"))
        record = run_config(name, args, out)
        for s in record["stages"]:
            print(f"{name:18s} {s['stage']:20s} {record['metric']}={s['metrics'].get(record['metric'])} "
                  f"cpu={s.get('cpu_s', 0):.0f}s wall={s.get('wall_s', 0):.0f}s tokens={s.get('tokens', '-')}")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Training-free activation sparsity on a language model: perplexity and one-token decode speed.

For each target sparsity and each ``--allocation``, per-layer magnitude
thresholds are calibrated on the model's calibration data
(`sparsecc.plan.activation_sparsity`; every linear layer but the LM head):
``uniform`` gives every layer the target, ``greedy`` spreads it over layer
groups by the measured output error per weight skipped
(`sparsecc.plan.activation_budget`), reaching the same weight-weighted
sparsity. The thresholds are inserted with `ActivationSparsityPass`, and the
program is

- evaluated with the README's perplexity protocol (first ``--eval-windows``
  windows of the evaluation half of the Lee corpus; never calibrated on), with
  the achieved sparsity per layer measured on that evaluation text too;
- lowered to torch-sparse at one token (batch 1, static shape), where the
  thresholded layers run the activation-sparse kernel, and timed interleaved
  against the dense program in PyTorch, in ONNX Runtime fp32 and dynamic int8
  (`quantize_dynamic`, the dense runtimes a user deploys) and on sparsecc's dense gemv (what the kernel alone
  buys without skipping anything), ``--threads`` threads, medians over
  ``--rounds``.

One token without a KV cache stands for a decoding step: the linear layers
(matrix-vector products bound by reading the weights) dominate either way;
attention over a long cache would add the same time to every variant.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_activation_sparsity.py --sparsities 0.4,0.5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--sparsities", default="0.4,0.5", help="target activation sparsities (comma-separated)")
    p.add_argument("--calibration", type=int, default=16, help="calibration batches for the thresholds")
    p.add_argument("--allocation", default="uniform,greedy",
                   help="uniform (one sparsity for every layer) and/or greedy (sparsecc.plan.activation_budget)")
    p.add_argument("--allocation-batches", type=int, default=4, help="calibration batches the greedy allocation reads")
    p.add_argument("--eval-windows", type=int, default=40, help="perplexity windows (README: 40)")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "activation-sparsity-smollm2"))
    args = p.parse_args(argv)

    from sparsecc.backends import LowerOptions, get_backend
    from sparsecc.core.capture import capture
    from sparsecc.core.machine import machine_info
    from sparsecc.core.timing import time_interleaved
    from sparsecc.models import get_model
    from sparsecc.passes import ActivationSparsityPass
    from sparsecc.plan.activation_budget import allocate_sparsity, layer_groups
    from sparsecc.plan.activation_sparsity import measure_activations, select_layers, thresholds_for
    from sparsecc.plan.calibrate import calibration_for
    from sparsecc.quality.evaluate import EvalOptions, evaluate

    torch.set_num_threads(args.threads)
    targets = [float(s) for s in args.sparsities.split(",")]
    spec = get_model(args.model)
    machine = {**machine_info(), "python": platform.python_version(), "torch": torch.__version__,
               "threads": args.threads, "load_avg": os.getloadavg()}
    log(f"machine {json.dumps(machine)}")
    program = capture(spec.model, spec.example_args, spec.example_kwargs, spec.dynamic_shapes)
    cal = calibration_for(spec, args.calibration)
    log(f"measuring linear inputs on {len(cal.batches)} calibration batches")
    stats = select_layers(measure_activations(program, cal.batches))
    allocations = args.allocation.split(",")
    thresholds: dict[str, dict[str, float]] = {}
    allocated: dict[str, dict[str, float]] = {}
    for t in targets:
        for how in allocations:
            name = f"act {t:.0%} {how}"
            if how == "uniform":
                thresholds[name] = thresholds_for(stats, t)
            elif how == "greedy":
                log(f"{name}: allocating over layer groups on {args.allocation_batches} calibration batches")
                allocated[name] = allocate_sparsity(program, stats, t, cal.batches[:args.allocation_batches],
                                                    progress=log)
                thresholds[name] = thresholds_for(stats, allocated[name])
            else:
                raise SystemExit(f"--allocation: unknown method {how!r} (uniform, greedy)")
    record: dict[str, Any] = {"model": args.model, "machine": machine, "command": " ".join(sys.argv),
                              "settings": vars(args), "layers": len(stats),
                              "data": {"calibration": f"{len(cal.batches)} calibration batches "
                                                      "(sparsecc.data.calibration_inputs)",
                                       "evaluation": f"perplexity, first {args.eval_windows} windows of the "
                                                     "evaluation half (README protocol)"},
                              "rows": []}
    groups = layer_groups(stats, program.module())
    record["allocations"] = {name: {g: alloc[fs[0]] for g, fs in groups.items()} for name, alloc in allocated.items()}
    programs = {"dense": program, **{name: ActivationSparsityPass(thr)(program).program
                                     for name, thr in thresholds.items()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = {name: {"variant": name} for name in programs}
    if not args.skip_quality:
        from sparsecc.data.lee import lm_windows

        # the achieved sparsity is read on 8 windows of the evaluation half (the thresholds never saw it)
        eval_ids = lm_windows(spec.extras["tokenizer"], "evaluation", 256, n=8)
        windows = [((), {"input_ids": w[None], "attention_mask": torch.ones_like(w[None])}) for w in eval_ids]
        for name, prog in programs.items():
            log(f"{name}: perplexity")
            res = evaluate(prog, "perplexity", model=spec, options=EvalOptions(max_windows=args.eval_windows))
            rows[name]["perplexity"] = float(res.metrics["perplexity"])
            if name != "dense":  # what the thresholds achieve on text they were not calibrated on
                achieved = measure_activations(prog, windows)
                chosen = {s.fqn for s in stats}
                shares = [s.zero for s in achieved if s.fqn in chosen]
                rows[name]["achieved_sparsity_eval"] = sum(shares) / len(shares)
            log(f"{name}: {rows[name]}")
    if not args.skip_timing:
        ids = spec.make_inputs(1, 1)
        one_args, one_kwargs = (tuple(ids[0]), dict(ids[1])) if isinstance(ids, tuple) else ((), dict(ids))
        one = capture(spec.model, one_args, one_kwargs, None)
        fns = {}
        with tempfile.TemporaryDirectory() as tmp:
            art = get_backend("onnx").lower(one, Path(tmp) / "dense-onnx", LowerOptions(threads=args.threads))
            ort = get_backend("onnx").load(art, args.threads)
            flat = list(one_args) + [one_kwargs[t.name] for t in art.inputs[len(one_args):]]
            fns["dense onnx fp32"] = lambda: ort(flat)
            # the dense model a CPU user tries first: ONNX Runtime's quantize_dynamic (int8 per-channel weights)
            from dataclasses import replace

            from sparsecc.benchmarking.int8_reference import quantize_dense_onnx

            (Path(tmp) / "int8").mkdir()
            quantize_dense_onnx(art.root / art.files["model"], Path(tmp) / "int8" / art.files["model"])
            ort_int8 = get_backend("onnx").load(replace(art, root=Path(tmp) / "int8",
                                                        files={"model": art.files["model"]}), args.threads)
            fns["dense onnx int8"] = lambda: ort_int8(flat)
            dense_module = one.module()
            fns["dense torch"] = lambda: dense_module(*one_args, **one_kwargs)
            # the dense program with the decoding-sized layers on sparsecc's gemv: what the kernel alone buys
            gemv = get_backend("torch-sparse").lower(one, Path(tmp) / "gemv",
                                                     LowerOptions(threads=args.threads, extra={"gemv_max_tokens": 8}))
            gemv_runner = get_backend("torch-sparse").load(gemv, args.threads)
            fns["dense torch-sparse gemv"] = lambda: gemv_runner(flat)
            for k, (name, thr) in enumerate(thresholds.items()):
                sparse = ActivationSparsityPass(thr)(one).program
                sa = get_backend("torch-sparse").lower(sparse, Path(tmp) / f"act{k}", LowerOptions(threads=args.threads))
                runner = get_backend("torch-sparse").load(sa, args.threads)
                log(f"{name}: {len(sa.meta['activation_kernels'])} layers on the activation-sparse kernel")
                fns[name] = (lambda r=runner: r(flat))
            log(f"timing {len(fns)} variants, 1 token, {args.rounds} interleaved rounds")
            with torch.inference_mode():
                timing = time_interleaved(fns, warmup=5, rounds=args.rounds)
        med = {k: v * 1e3 for k, v in timing.medians().items()}
        fastest = min(("dense onnx fp32", "dense onnx int8", "dense torch", "dense torch-sparse gemv"),
                      key=lambda k: med[k])
        record["fastest_dense"] = fastest
        for name, ms in med.items():
            row = rows.setdefault(name, {"variant": name})
            row.update({"ms": ms, "speedup_vs_fastest_dense": med[fastest] / ms,
                        "samples_ms": [s * 1e3 for s in timing.samples_s[name]]})
        rows["dense onnx fp32"].setdefault("perplexity", rows["dense"].get("perplexity"))
        rows["dense torch"].setdefault("perplexity", rows["dense"].get("perplexity"))
        rows["dense torch-sparse gemv"].setdefault("perplexity", rows["dense"].get("perplexity"))
        rows.pop("dense", None)
    record["rows"] = list(rows.values())
    out.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str))
    md = markdown(record)
    out.with_suffix(".md").write_text(md)
    print(md)


def markdown(record: dict[str, Any]) -> str:
    m = record["machine"]
    lines = [f"{record['model']}, 1 token, batch 1, {record['settings']['threads']} thread(s), "
             f"{record['settings']['rounds']} interleaved rounds (medians); {m.get('cpu')} "
             f"({', '.join(m.get('cpu_flags', []))}), torch {m.get('torch')}, load {m['load_avg'][0]:.2f}.", "",
             f"| variant | ms | vs fastest dense ({record.get('fastest_dense', '-')}) | perplexity | "
             "achieved sparsity (eval text) |", "|---|---:|---:|---:|---:|"]
    for r in record["rows"]:
        ms = f"{r['ms']:.2f}" if "ms" in r else "-"
        sp = f"{r['speedup_vs_fastest_dense']:.2f}x" if "speedup_vs_fastest_dense" in r else "-"
        ppl = f"{r['perplexity']:.2f}" if r.get("perplexity") else "-"
        ach = f"{r['achieved_sparsity_eval']:.1%}" if "achieved_sparsity_eval" in r else "-"
        lines.append(f"| {r['variant']} | {ms} | {sp} | {ppl} | {ach} |")
    for name, alloc in record.get("allocations", {}).items():
        lines += ["", f"{name}: " + ", ".join(f"{g.replace('model.layers.*.', '')} {s:.0%}" for g, s in alloc.items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

"""Streamed layer-wise pruning: peak RSS and time per block against depth and width, and the SmolLM2 check.

Every measurement runs in a fresh subprocess, so its VmHWM is its own.

- ``--sweep``: random Llama-shaped checkpoints written to disk from a config
  (`sparsecc.models.decoder_checkpoint.write_random_checkpoint`), pruned streamed
  at 2:4 with SparseGPT on random tokens, at several depths and widths. Peak
  RSS above the process's RSS after imports should stay flat as depth grows;
  time per block gives the extrapolation to 7B / 70B shapes (per-block cost
  scaled by the block's FLOPs and SparseGPT work, see `extrapolate`).
- ``--smollm2``: SmolLM2-135M 2:4 SparseGPT streamed from its GGUF file against
  the in-memory path (`sparsify` with sequential calibration), same 64 x 256
  calibration windows: mask agreement, weight difference, perplexity on the
  README protocol (147 windows of 256 tokens) and peak RSS of each.

Run under ``flock /tmp/sparsecc-bench.lock``; results go to
bench/results/streamed.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "streamed.json"

# hidden, ffn, heads, kv_heads: the widths of the sweep and of the extrapolation targets.
WIDTHS = {"w512": (512, 1536, 8, 2), "w1024": (1024, 2816, 16, 4)}
TARGETS = {"llama-7b": (4096, 11008, 32, 32, 32), "llama-70b": (8192, 28672, 64, 8, 80)}


def _child(code: str, timeout: float = 900) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env,
                       cwd=ROOT)
    if p.returncode:
        raise RuntimeError(f"child failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


STREAMED_CHILD = """
import json, sys
from sparsecc.flows.streamed import StreamedOptions, prune_streamed
from sparsecc.benchmarking.memory import rss_mb
import transformers.models.llama.modeling_llama, sparsecc.plan.block_pruning  # imports before the start mark
opts = StreamedOptions(pattern="2:4", criterion="sparsegpt", samples={samples}, seq_len={seq_len},
                       calibration="{calibration}", criterion_options={{"damp": 0.01, "blocksize": 128}})
r = prune_streamed({src!r}, {out!r}, opts, force=True)
print(json.dumps(r.to_dict()))
"""


def sweep(args) -> list[dict]:
    from sparsecc.models.decoder_checkpoint import DecoderShape, write_random_checkpoint

    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as d:
        for wname in args.widths.split(","):
            hidden, ffn, heads, kv = WIDTHS[wname]
            for depth in [int(x) for x in args.depths.split(",")]:
                src = Path(d) / f"{wname}-{depth}" / "model.safetensors"
                src.parent.mkdir()
                write_random_checkpoint(src, DecoderShape(hidden=hidden, ffn=ffn, heads=heads, kv_heads=kv, layers=depth,
                                                          vocab=1024, max_positions=4096))
                size_mb = src.stat().st_size / 2**20
                r = _child(STREAMED_CHILD.format(samples=args.samples, seq_len=args.seq_len, calibration="random",
                                                 src=str(src), out=str(src.with_name("out.safetensors"))))
                steady = r["block_seconds"][1:] or r["block_seconds"]
                row = {"width": wname, "hidden": hidden, "ffn": ffn, "heads": heads, "kv_heads": kv, "depth": depth,
                       "checkpoint_mb": round(size_mb, 1), "rss_start_mb": round(r["rss_start_mb"], 1),
                       "peak_rss_mb": round(r["peak_rss_mb"], 1),
                       "rss_setup_mb": round(r["rss_setup_mb"], 1),
                       "peak_above_setup_mb": round(r["peak_rss_mb"] - r["rss_setup_mb"], 1),
                       "budget_mb": round(r["budget_mb"], 1), "s_per_block": round(sum(steady) / len(steady), 3),
                       "first_block_s": round(r["block_seconds"][0], 2), "total_s": round(r["seconds"], 1),
                       "load": os.getloadavg()[0]}
                print(json.dumps(row), flush=True)
                rows.append(row)
                for f in src.parent.iterdir():
                    f.unlink()
    return rows


def _block_cost(hidden: int, ffn: int, heads: int, kv: int, tokens: int) -> tuple[float, float]:
    """(forward FLOPs of one block on ``tokens`` calibration tokens, SparseGPT solve FLOPs)."""
    kvd = kv * hidden // heads
    params = 2 * hidden * hidden + 2 * hidden * kvd + 3 * hidden * ffn
    attn = 2 * tokens * 256 * hidden  # scores and weighted sum at 256-token windows
    forward = 2 * tokens * params + 2 * attn
    # Hessians (X^T X) per distinct input, then per weight ~ rows * K^2 (lazy blocked OBS updates) + K^3 factor.
    hess = 2 * tokens * (3 * hidden**2 + ffn**2)
    solve = sum(r * k * k for r, k in ((hidden, hidden), (kvd, hidden), (kvd, hidden), (hidden, hidden),
                                       (ffn, hidden), (ffn, hidden), (hidden, ffn)))
    factor = 3 * hidden**3 + ffn**3
    return forward * 2 + hess, solve + factor  # two forwards per block (solve pass + output pass)


def extrapolate(rows: list[dict], tokens: int) -> list[dict]:
    """Seconds per block and per model for the TARGETS, from a least-squares fit of measured blocks.

    Model: t_block = a * forward_flops + b * solve_flops, a, b >= 0, least squares on the measured widths
    (steady blocks). Where the unconstrained fit makes a coefficient negative, that term is dropped and the
    other refitted alone (at these widths the two terms are nearly proportional).
    """
    import numpy as np

    xs, ys = [], []
    for r in rows:
        f, s = _block_cost(r["hidden"], r["ffn"], r["heads"], r["kv_heads"], tokens)
        xs.append([f, s])
        ys.append(r["s_per_block"])
    x, y = np.array(xs, dtype=float), np.array(ys, dtype=float)
    (a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
    if a < 0 or b < 0:
        keep = 0 if b < 0 else 1
        c = float(x[:, keep] @ y / (x[:, keep] @ x[:, keep]))
        a, b = (c, 0.0) if keep == 0 else (0.0, c)
    out = []
    for name, (h, ffn, heads, kv, layers) in TARGETS.items():
        f, s = _block_cost(h, ffn, heads, kv, tokens)
        per = a * f + b * s
        out.append({"model": name, "layers": layers, "s_per_block": round(per, 1), "hours": round(per * layers / 3600, 2),
                    "gflops_forward": round(f / 1e9), "gflops_solve": round(s / 1e9),
                    "fit": {"s_per_forward_gflop": a * 1e9, "s_per_solve_gflop": b * 1e9}})
    return out


SMOL_STREAMED = STREAMED_CHILD
SMOL_MEMORY = """
import json, time, torch
from sparsecc.benchmarking.memory import peak_rss_mb, rss_mb
from sparsecc.core.capture import capture
from sparsecc.core.safetensors_io import SafetensorsWriter
from sparsecc.flows.sparsify import sparsify
from sparsecc.models import get_model
from sparsecc.plan.calibrate import calibration_for
import transformers.models.llama.modeling_llama
start = rss_mb()
t0 = time.perf_counter()
spec = get_model("smollm2")
program = capture(spec.model, spec.example_args, spec.example_kwargs, spec.dynamic_shapes)
recipe = {{"pattern": "2:4", "criterion": "sparsegpt", "layers": {{"min_params": 4096}},
          "calibration": {{"samples": {samples}, "seq_len": {seq_len}, "sequential": True}},
          "criterion_options": {{"damp": 0.01, "blocksize": 128}}}}
res = sparsify(program, recipe, fold=True, calibration=calibration_for(spec, {samples}, {seq_len}))
seconds = time.perf_counter() - t0
sd = res.program.state_dict
names = [n for n in sd if ".layers." in n and n.endswith("proj.weight")]
with SafetensorsWriter({out!r}, [(n, sd[n].dtype, tuple(sd[n].shape)) for n in names]) as w:
    for n in names:
        w.write(n, sd[n].detach())
    w.finish({{}})
print(json.dumps({{"rss_start_mb": start, "peak_rss_mb": peak_rss_mb(), "seconds": seconds}}))
"""
SMOL_EVAL = """
import json
from sparsecc.models.resolve import resolve_model
from sparsecc.quality.evaluate import evaluate
from sparsecc.quality.task import EvalOptions
spec = resolve_model({path!r})
r = evaluate(spec.model, "perplexity", model=spec, reference=None, options=EvalOptions(max_windows={windows}))
print(json.dumps(r.metrics))
"""


def smollm2(args) -> dict:
    import torch

    from sparsecc.core.safetensors_io import SafetensorsReader

    d = Path(tempfile.mkdtemp(dir=args.tmp))
    streamed_out, memory_out = d / "streamed.safetensors", d / "memory.safetensors"
    s = _child(STREAMED_CHILD.format(samples=args.samples, seq_len=args.seq_len, calibration="lee", src="smollm2",
                                     out=str(streamed_out)), timeout=1800)
    print("streamed", json.dumps(s), flush=True)
    m = _child(SMOL_MEMORY.format(samples=args.samples, seq_len=args.seq_len, out=str(memory_out)), timeout=1800)
    print("in-memory", json.dumps(m), flush=True)
    a, b = SafetensorsReader(streamed_out), SafetensorsReader(memory_out)
    agree = total = 0
    worst = 0.0
    equal_masks = 0
    for n in b.names():
        x, y = a.read(n), b.read(n)
        same = (x != 0) == (y != 0)
        agree += int(same.sum())
        total += same.numel()
        equal_masks += bool(same.all())
        worst = max(worst, float((x - y).abs().max()))
    windows = args.eval_windows
    ppl_s = _child(SMOL_EVAL.format(path=str(streamed_out), windows=windows), timeout=1800)
    # The in-memory weights go into the same loader: copy the streamed file's metadata over its tensors.
    merged = d / "memory-full.safetensors"
    _merge(streamed_out, memory_out, merged)
    ppl_m = _child(SMOL_EVAL.format(path=str(merged), windows=windows), timeout=1800)
    out = {"weights": len(b.names()), "identical_masks": equal_masks, "mask_agreement": agree / total,
           "max_weight_diff": worst, "perplexity_streamed": ppl_s["perplexity"],
           "perplexity_in_memory": ppl_m["perplexity"], "eval_windows": windows or 147, "streamed": s, "in_memory": m}
    print(json.dumps(out), flush=True)
    for f in d.iterdir():
        f.unlink()
    d.rmdir()
    del torch
    return out


def _merge(streamed: Path, memory: Path, out: Path) -> None:
    """``streamed`` with the pruned weights of ``memory`` (and the streamed file's metadata)."""
    from sparsecc.core.safetensors_io import SafetensorsReader, SafetensorsWriter

    a, b = SafetensorsReader(streamed), SafetensorsReader(memory)
    with SafetensorsWriter(out, [(n, a.dtype(n), a.shape(n)) for n in a.names()]) as w:
        for n in a.names():
            w.write(n, (b if n in b.entries else a).read(n))
        w.finish(a.metadata)


def markdown(rows: list[dict], extra: list[dict]) -> str:
    lines = ["| width (hidden/ffn) | depth | checkpoint (MB) | peak RSS above set-up (MB) | one block's W+A+H (MB) "
             "| s / block |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['hidden']}/{r['ffn']} | {r['depth']} | {r['checkpoint_mb']:.0f} | "
                     f"{r['peak_above_setup_mb']:.0f} | {r['budget_mb']:.0f} | {r['s_per_block']:.2f} |")
    lines += ["", "| model | layers | s / block (extrapolated) | hours |", "|---|---:|---:|---:|"]
    for e in extra:
        lines.append(f"| {e['model']} | {e['layers']} | {e['s_per_block']:.0f} | {e['hours']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--smollm2", action="store_true")
    ap.add_argument("--smollm2-rss", action="store_true", help="only the streamed SmolLM2 run: peak RSS and time")
    ap.add_argument("--depths", default="4,8,16")
    ap.add_argument("--widths", default="w512,w1024")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-windows", type=int, default=None)
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--refit", action="store_true", help="redo the extrapolation from the stored sweep")
    args = ap.parse_args()
    doc = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    doc["host"] = {"cpus": os.cpu_count(), "load": os.getloadavg()[0], "when": time.strftime("%Y-%m-%d %H:%M")}
    if args.sweep:
        new = sweep(args)
        keys = {(r["width"], r["depth"]) for r in new}
        old = [r for r in doc.get("sweep", {}).get("rows", []) if (r["width"], r["depth"]) not in keys]
        rows = sorted(old + new, key=lambda r: (r["hidden"], r["depth"]))  # runs of other widths are kept
        extra = extrapolate(rows, args.samples * args.seq_len)
        doc["sweep"] = {"samples": args.samples, "seq_len": args.seq_len, "rows": rows, "extrapolation": extra}
        print(markdown(rows, extra))
    if args.refit:
        sw = doc["sweep"]
        sw["extrapolation"] = extrapolate(sw["rows"], sw["samples"] * sw["seq_len"])
        print(markdown(sw["rows"], sw["extrapolation"]))
    if args.smollm2:
        doc["smollm2"] = smollm2(args)
    if args.smollm2_rss:
        d = Path(tempfile.mkdtemp(dir=args.tmp))
        r = _child(STREAMED_CHILD.format(samples=args.samples, seq_len=args.seq_len, calibration="lee", src="smollm2",
                                         out=str(d / "streamed.safetensors")), timeout=1800)
        (d / "streamed.safetensors").unlink()
        d.rmdir()
        r["peak_above_setup_mb"] = r["peak_rss_mb"] - r["rss_setup_mb"]
        r["load"] = os.getloadavg()[0]
        doc.setdefault("smollm2", {})["streamed_rss"] = r
        print(json.dumps(r))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()

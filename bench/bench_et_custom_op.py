"""ExecuTorch dense (XNNPACK) against ExecuTorch with sparsecc's custom ops (libsparsecc_executorch.so), one model.

The model (default MiniLM) is captured, sparsified with a recipe (default 8x8
blocks at 90%, folded) and lowered twice: the dense program to ``executorch``
(XNNPACK + portable kernels) and the sparse one to ``executorch-custom-ops``
(its sparse linear layers run ``sparsecc::et_sparse_linear`` and its sparse 1x1
convolutions ``sparsecc::et_sparse_conv1x1`` where that measured faster than
XNNPACK at lowering; the rest as in the dense program). Both run in the
ExecuTorch Python runtime, batch 1 (x ``--seq`` tokens for a sequence model),
``--threads`` threads, timed interleaved (`sparsecc.core.timing.time_interleaved`);
the custom-op program is checked against the sparse PyTorch program (same
weights, relative error <= 1e-4).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_et_custom_op.py --out bench/results/et-custom-op-minilm.json
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_et_custom_op.py --model efficientnet-lite0 \\
        --recipe recipes/pointwise8x8-90.yaml --out bench/results/et-custom-op-efficientnet.json
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def lower(name: str, program: Any, folder: Path, axis_names: dict, threads: int, rounds: int) -> Any:
    from sparsecc.backends import LowerOptions, get_backend

    extra = {"dynamic_axes": axis_names, "custom_ops_rounds": rounds}
    t0 = time.perf_counter()
    art = get_backend(name).lower(program, folder, LowerOptions(threads=threads, extra=extra))
    log(f"  {name}: lowered in {time.perf_counter() - t0:.1f} s")
    return art, get_backend(name).load(art, threads)


def machine_record(threads: int) -> dict[str, Any]:
    from importlib.metadata import version

    from sparsecc.core.machine import machine_info
    from sparsecc.kernels import et_library

    library = et_library.load_et_library()
    return {**machine_info(), "python": platform.python_version(), "executorch": version("executorch"),
            "torch": torch.__version__, "threads": threads, "custom_op_isa": et_library.library_isa(),
            "library": str(library), "load_avg_start": os.getloadavg()}


def model_rows(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from sparsecc.core.capture import capture, dynamic_axis_names
    from sparsecc.core.program import tensor_leaves
    from sparsecc.core.timing import time_interleaved
    from sparsecc.flows.sparsify import sparsify
    from sparsecc.models import get_model
    from sparsecc.recipes import builtin_recipe

    spec = get_model(args.model)
    # captured with two sequences of seq/2 tokens (torch.export cannot keep batch 1 dynamic); timed at 1 x seq
    cap_args, cap_kwargs = spec.make_inputs(2, args.seq // 2)
    dense = capture(spec.model, cap_args, cap_kwargs, spec.dynamic_shapes)
    axis_names = dynamic_axis_names(dense, spec.model, cap_args, cap_kwargs, spec.dynamic_shapes)
    timed_args, timed_kwargs = spec.make_inputs(1, args.seq)
    flat = list(timed_args) + list(timed_kwargs.values())
    recipe = builtin_recipe(args.recipe) or args.recipe  # a named recipe (recipes/*.yaml) or a file
    log(f"sparsify {args.model} with {recipe}")
    sparse = sparsify(dense, recipe, fold=True).program
    log("lower: dense executorch, sparse executorch-custom-ops")
    _a, dense_run = lower("executorch", dense, tmp / "dense", axis_names, args.threads, args.layer_rounds)
    art, custom_run = lower("executorch-custom-ops", sparse, tmp / "sparse-custom", axis_names, args.threads,
                            args.layer_rounds)
    with torch.no_grad():
        want = tensor_leaves(sparse.module()(*timed_args, **timed_kwargs))[0]
    got = custom_run(flat)[0]
    rel = float((got - want).abs().max() / want.abs().max())
    meta = art.meta["custom_ops"]
    log(f"{meta['replaced']}/{len(meta['layers'])} layers run sparsecc custom ops; relative error {rel:.2e} "
        f"against the sparse PyTorch program")
    fns = {"executorch dense": lambda: dense_run(flat), "executorch custom ops": lambda: custom_run(flat)}
    med = time_interleaved(fns, warmup=args.warmup, rounds=args.rounds).medians()
    layers = [{k: e[k] for k in ("fqn", "shape", "tokens", "choice", "speedup")} for e in meta["layers"]]
    return {"model": args.model, "recipe": args.recipe, "rel_err_vs_pytorch": rel,
            "layers_replaced": meta["replaced"], "layers_timed": len(meta["layers"]),
            "formats": sorted({e["choice"] for e in meta["layers"]}), "lowering_custom_ops_s": meta["time_s"],
            "timing_program": meta.get("timing_program"), "median_ms": {k: v * 1e3 for k, v in med.items()},
            "speedup": med["executorch dense"] / med["executorch custom ops"], "layers": layers}


def markdown(r: dict[str, Any]) -> str:
    m, s, mr = r["machine"], r["settings"], r["model"]
    lines = [f"{m.get('cpu', '')}, ISA {m['custom_op_isa']}, executorch {m['executorch']}, {s['threads']} thread, "
             f"batch 1 x {s['seq']} tokens, {s['rounds']} interleaved rounds; load average "
             f"{m['load_avg_start'][0]:.2f} at start, {r['load_avg_end'][0]:.2f} at end", "",
             "| model | ExecuTorch dense (XNNPACK) | ExecuTorch + sparsecc custom ops | speedup | layers replaced | "
             "rel. error |", "| --- | --- | --- | --- | --- | --- |",
             f"| {mr['model']} {mr['recipe']} | {mr['median_ms']['executorch dense']:.2f} ms | "
             f"{mr['median_ms']['executorch custom ops']:.2f} ms | {mr['speedup']:.2f}x | "
             f"{mr['layers_replaced']}/{mr['layers_timed']} | {mr['rel_err_vs_pytorch']:.1e} |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm")
    p.add_argument("--recipe", default="block8x8-90")
    p.add_argument("--seq", type=int, default=128, help="tokens per timed call (batch 1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--layer-rounds", type=int, default=7, help="interleaved rounds per layer when choosing at lowering")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "et-custom-op-minilm.json"))
    args = p.parse_args(argv)

    # torch copies the runtime's outputs: more threads than asked would contend with the runtime's own
    torch.set_num_threads(args.threads)
    record: dict[str, Any] = {"machine": machine_record(args.threads), "settings": vars(args),
                              "command": " ".join(["bench/bench_et_custom_op.py", *(argv or sys.argv[1:])])}
    log(f"machine {json.dumps(record['machine'])}")
    with tempfile.TemporaryDirectory(prefix="sparsecc-et-custom-op-") as tmp:
        record["model"] = model_rows(args, Path(tmp))
    record["load_avg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(markdown(record))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()

"""ONNX Runtime dense against ONNX Runtime with sparsecc's custom ops (libsparsecc_ort.so), one model and single layers.

The model (default MiniLM) is captured, sparsified with a recipe (default
8x8 blocks at 90%, folded) and lowered twice: the dense program to ``onnx``
and the sparse one to ``onnx-custom-ops`` (its sparse linear layers run
``sparsecc.SparseMatMul`` and its sparse 1x1 convolutions
``sparsecc.SparseConv1x1`` where that measured faster at lowering). Both run in
plain ONNX Runtime, batch 1 (x ``--seq`` tokens for a sequence model),
``--threads`` threads, timed interleaved (`sparsecc.core.timing.time_interleaved`);
the custom-op model is checked against the sparse program lowered to plain
``onnx`` (same weights, relative error <= 1e-4). Then single layers (same
blocks and sparsity): linear 3072x768 and 768x3072 at ``--seq`` tokens (one-node
MatMul + Add against SparseMatMul), and EfficientNet-Lite0's 1x1 convolutions
112 -> 672 and 672 -> 112 on a 14x14 map (one-node Conv against SparseConv1x1),
each in BSR and CSR.

With ``--int8`` the sparse program is quantized (int8 per-channel weights,
dynamic per-token activations, `quantize: int8`) before it is lowered, so its
sparse linears can run ``sparsecc.SparseMatMulInt8``; the reference is the
dense int8 model a user gets from ONNX Runtime (``quantize_dynamic`` of the
dense ONNX build, per-channel QInt8, `sparsecc.benchmarking.int8_reference`).
The single linear layers are then int8 too (one-node ``quantize_dynamic``
model against the int8 op in 8x8 blocks and 1x4 groups).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_ort_custom_op.py --out bench/results/ort-custom-op-minilm.json
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_ort_custom_op.py --model efficientnet-lite0 \
        --recipe recipes/pointwise8x8-90.yaml --out bench/results/ort-custom-op-efficientnet.json
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_ort_custom_op.py --int8 \\
        --out bench/results/ort-custom-op-int8-minilm.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def lower(name: str, program: Any, folder: Path, axis_names: dict, threads: int, example: list) -> Any:
    from sparsecc.backends import LowerOptions, get_backend

    extra = {"dynamic_axes": axis_names, "example_inputs": example}
    art = get_backend(name).lower(program, folder, LowerOptions(threads=threads, extra=extra))
    return art, get_backend(name).load(art, threads)


def int8_isa(lib: Any) -> str | None:
    """The instruction set of SparseMatMulInt8 (None for a library from before the int8 op)."""
    try:
        fn = lib.SparseccOrtInt8Isa
    except AttributeError:
        return None
    fn.restype = ctypes.c_char_p
    return fn().decode()


def machine_record(threads: int, library: Path) -> dict[str, Any]:
    import onnxruntime

    from sparsecc.core.machine import machine_info
    from sparsecc.kernels.ort_library import HEADERS_PACKAGE

    lib = ctypes.CDLL(str(library))
    lib.SparseccOrtIsa.restype = ctypes.c_char_p
    return {**machine_info(), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__, "numpy": np.__version__, "threads": threads,
            "custom_op_isa": lib.SparseccOrtIsa().decode(), "custom_op_int8_isa": int8_isa(lib),
            "ort_headers": f"{HEADERS_PACKAGE['name']} {HEADERS_PACKAGE['version']} (Debian {HEADERS_PACKAGE['suite']})",
            "load_avg_start": os.getloadavg()}


def model_rows(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from sparsecc.core.capture import capture, dynamic_axis_names
    from sparsecc.core.timing import time_interleaved
    from sparsecc.flows.sparsify import sparsify
    from sparsecc.models import get_model

    spec = get_model(args.model)
    # captured with two sequences of seq/2 tokens (torch.export cannot keep batch 1 dynamic); timed at 1 x seq
    cap_args, cap_kwargs = spec.make_inputs(2, args.seq // 2)
    dense = capture(spec.model, cap_args, cap_kwargs, spec.dynamic_shapes)
    axis_names = dynamic_axis_names(dense, spec.model, cap_args, cap_kwargs, spec.dynamic_shapes)
    timed_args, timed_kwargs = spec.make_inputs(1, args.seq)
    flat = list(timed_args) + list(timed_kwargs.values())
    from sparsecc.recipes import builtin_recipe

    recipe = builtin_recipe(args.recipe) or args.recipe  # a named recipe (recipes/*.yaml) or a file
    log(f"sparsify {args.model} with {recipe}")
    sparse = sparsify(dense, recipe, fold=True).program
    if args.int8:
        from sparsecc.passes.quantize_weights import quantize_program
        from sparsecc.plan.quantize_options import QuantizeOptions

        sparse = quantize_program(sparse, QuantizeOptions(), None)
    log("lower: dense onnx, sparse onnx (same weights, plain ORT), sparse onnx-custom-ops")
    dense_art, dense_run = lower("onnx", dense, tmp / "dense", axis_names, args.threads, flat)
    if args.int8:  # the user's dense int8 model: ORT's quantize_dynamic of the dense build
        from sparsecc.backends.onnx.runtime import OrtRunner
        from sparsecc.benchmarking.int8_reference import quantize_dense_onnx

        path = dense_art.path("model")
        int8_path = quantize_dense_onnx(path, path.with_name("int8-" + path.name))
        dense_run = OrtRunner(int8_path, dense_art.inputs, args.threads, None)
    _b, plain_run = lower("onnx", sparse, tmp / "sparse-plain", axis_names, args.threads, flat)
    art, custom_run = lower("onnx-custom-ops", sparse, tmp / "sparse-custom", axis_names, args.threads, flat)
    want, got = plain_run(flat)[0], custom_run(flat)[0]
    rel = float((got - want).abs().max() / want.abs().max())  # int8: the activation quantization's error
    meta = art.meta["custom_ops"]
    log(f"{meta['replaced']}/{len(meta['layers'])} layers run sparsecc custom ops; relative error {rel:.2e}")
    fns = {"ort dense": lambda: dense_run(flat), "ort custom op": lambda: custom_run(flat)}
    med = time_interleaved(fns, warmup=args.warmup, rounds=args.rounds).medians()
    return {"model": args.model, "recipe": args.recipe + (" + int8" if args.int8 else ""), "rel_err_vs_plain_ort": rel,
            "layers_replaced": meta["replaced"], "layers_timed": len(meta["layers"]),
            "formats": sorted({e["choice"] for e in meta["layers"]}),
            "median_ms": {k: v * 1e3 for k, v in med.items()},
            "speedup": med["ort dense"] / med["ort custom op"]}


def time_layer_models(models: dict[str, tuple[Any, Any]], x: np.ndarray, args: argparse.Namespace
                      ) -> tuple[dict[str, float], dict[str, float]]:
    """Medians (seconds) of one-layer models ``{name: (model, library)}`` timed interleaved on ``x``, and each
    model's error relative to the "dense" one."""
    from sparsecc.core.ort_session import open_session, session_options
    from sparsecc.core.timing import time_interleaved

    sess = {k: open_session(m.SerializeToString(), session_options(args.threads), lib) for k, (m, lib) in models.items()}
    ref = sess["dense"].run(None, {"x": x})[0]
    errs = {k: float(np.abs(s.run(None, {"x": x})[0] - ref).max() / np.abs(ref).max()) for k, s in sess.items()}
    med = time_interleaved({k: (lambda s=s: s.run(None, {"x": x})) for k, s in sess.items()},
                           warmup=args.warmup, rounds=args.rounds, sample_s=0.02).medians()
    return med, errs


def layer_rows(args: argparse.Namespace, library: Path) -> list[dict[str, Any]]:
    from sparsecc.backends.onnx.custom_ops import dense_matmul_model, sparse_matmul_model

    rows = []
    rng = np.random.default_rng(0)
    # (kind, N, K, input shape): two MiniLM linears, EfficientNet-Lite0's 14x14 expand and project 1x1 convs
    shapes = [("linear", 3072, 768, (args.seq, 768)), ("linear", 768, 3072, (args.seq, 3072)),
              ("conv1x1", 672, 112, (1, 112, 14, 14)), ("conv1x1", 112, 672, (1, 672, 14, 14))]
    for kind, n, k, x_shape in shapes:
        conv = kind == "conv1x1"
        keep = rng.random((n // 8, k // 8)) >= 0.9
        w = rng.standard_normal((n, k)).astype(np.float32) * np.kron(keep, np.ones((8, 8), np.float32))
        bias = rng.standard_normal(n).astype(np.float32)
        x = rng.standard_normal(x_shape).astype(np.float32)
        models = {"dense": (dense_matmul_model(w, bias, conv), None),
                  "bsr 8x8": (sparse_matmul_model(w, bias, 8, conv), library),
                  "csr": (sparse_matmul_model(w, bias, 1, conv), library)}
        med, errs = time_layer_models(models, x, args)
        rows.append({"layer": kind, "weight": f"{n}x{k}", "input": list(x_shape), "median_ms": {k2: v * 1e3 for k2, v in med.items()},
                     "speedup_bsr": med["dense"] / med["bsr 8x8"], "speedup_csr": med["dense"] / med["csr"],
                     "rel_err": errs})
        log(f"{kind} {n}x{k}: " + ", ".join(f"{k2} {v * 1e3:.3f} ms" for k2, v in med.items()))
    return rows


def int8_layer_rows(args: argparse.Namespace, library: Path) -> list[dict[str, Any]]:
    """The two linears in int8: ORT's quantize_dynamic of the dense layer against SparseMatMulInt8."""
    from sparsecc.backends.onnx.custom_ops_int8 import dense_int8_model, sparse_int8_model
    from sparsecc.kernels.int8 import quantize_per_channel

    rows = []
    rng = np.random.default_rng(0)
    for n, k in ((3072, 768), (768, 3072)):
        keep = rng.random((n // 8, k // 8)) >= 0.9
        w = rng.standard_normal((n, k)).astype(np.float32) * np.kron(keep, np.ones((8, 8), np.float32))
        q, scale = (t.numpy() for t in quantize_per_channel(torch.from_numpy(w)))
        bias = rng.standard_normal(n).astype(np.float32)
        x = rng.standard_normal((args.seq, k)).astype(np.float32)
        models = {"dense": (dense_int8_model(q.astype(np.float32) * scale[:, None], bias), None),
                  "bsr 8x8": (sparse_int8_model(q, scale, bias, 8), library),
                  "csr": (sparse_int8_model(q, scale, bias, 1), library)}  # 1x4 groups, the unstructured layout
        med, errs = time_layer_models(models, x, args)
        rows.append({"layer": "linear int8", "weight": f"{n}x{k}", "input": [args.seq, k],
                     "median_ms": {k2: v * 1e3 for k2, v in med.items()},
                     "speedup_bsr": med["dense"] / med["bsr 8x8"], "speedup_csr": med["dense"] / med["csr"],
                     "rel_err": errs})
        log(f"int8 linear {n}x{k}: " + ", ".join(f"{k2} {v * 1e3:.3f} ms" for k2, v in med.items()))
    return rows


def markdown(r: dict[str, Any]) -> str:
    m, s = r["machine"], r["settings"]
    mr = r["model"]
    lines = [f"{m.get('cpu', '')}, ISA {m['custom_op_isa']}, onnxruntime {m['onnxruntime']}, {s['threads']} thread, "
             f"batch 1 x {s['seq']} tokens, {s['rounds']} interleaved rounds; load average "
             f"{m['load_avg_start'][0]:.2f} at start, {r['load_avg_end'][0]:.2f} at end", "",
             f"| model | ONNX Runtime dense{' int8' if s.get('int8') else ''} | ONNX Runtime + sparsecc custom ops | "
             "speedup | layers replaced | "
             "rel. error |", "| --- | --- | --- | --- | --- | --- |",
             f"| {mr['model']} {mr['recipe']} | {mr['median_ms']['ort dense']:.2f} ms | "
             f"{mr['median_ms']['ort custom op']:.2f} ms | {mr['speedup']:.2f}x | "
             f"{mr['layers_replaced']}/{mr['layers_timed']} | {mr['rel_err_vs_plain_ort']:.1e} |", "",
             ("| layer [N, K], 8x8 at 90% | input | dense int8 (quantize_dynamic) | int8 op BSR 8x8 | "
              "int8 op 1x4 groups | " if s.get("int8") else
              "| layer [N, K], 8x8 at 90% | input | dense (MatMul+Add / Conv) | custom op BSR 8x8 | custom op CSR | ")
             + "speedup (BSR) |", "| --- | --- | --- | --- | --- | --- |"]
    for row in r["layers"]:
        t = row["median_ms"]
        lines.append(f"| {row.get('layer', 'linear')} {row['weight']} | {row.get('input', '')} | {t['dense']:.3f} ms "
                     f"| {t['bsr 8x8']:.3f} ms | {t['csr']:.3f} ms | {row['speedup_bsr']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm")
    p.add_argument("--recipe", default="block8x8-90")
    p.add_argument("--seq", type=int, default=128, help="tokens per timed call (batch 1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--skip-model", action="store_true", help="single layers only")
    p.add_argument("--int8", action="store_true",
                   help="int8: ORT quantize_dynamic of the dense model against SparseMatMulInt8 "
                        "('csr' rows: 1x4 groups)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "ort-custom-op-minilm.json"))
    args = p.parse_args(argv)

    from sparsecc.kernels.ort_library import build_library

    torch.set_num_threads(args.threads)
    library = build_library()
    record: dict[str, Any] = {"machine": machine_record(args.threads, library), "settings": vars(args),
                              "command": " ".join(["bench/bench_ort_custom_op.py", *(argv or sys.argv[1:])])}
    log(f"machine {json.dumps(record['machine'])}")
    with tempfile.TemporaryDirectory(prefix="sparsecc-ort-custom-op-") as tmp:
        record["model"] = None if args.skip_model else model_rows(args, Path(tmp))
    record["layers"] = int8_layer_rows(args, library) if args.int8 else layer_rows(args, library)
    record["load_avg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    if record["model"] is not None:
        print(markdown(record))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()

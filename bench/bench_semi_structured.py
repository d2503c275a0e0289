"""Dense vs 2:4 semi-structured (cuSPARSELt / CUTLASS) on a CUDA GPU, side by side.

Two cases, each timed interleaved (dense, sparse, dense, sparse, ...) with
CUDA events after a warm-up, reporting medians and dense/sparse ratios with
a bootstrap 95% interval:

1. one linear layer, 4096x4096 weight, 2048 tokens, fp16 (the shape where
   2:4 kernels are expected to pay: about 1.3x or more on an H100);
2. a BERT-base-sized encoder (12 layers, hidden 768, FFN 3072, 12 heads;
   random weights, every linear 2:4 by magnitude) on batch x seq tokens,
   with every eligible linear swapped, and again with only those whose 2:4
   kernel was timed faster at that token count
   (``swap_semi_structured(..., tokens=batch*seq)``).

Each case is timed twice: eager (each call launched from Python, as a model
runs by default) and replayed from a CUDA graph (no host work between
kernels: what the kernels themselves cost). The gap is the host time per
call, which for cuSPARSELt includes setting up its matmul plan on every call.

``--sweep`` adds single linears of other shapes and token counts (BERT-base
and Llama-7B/8B FFN and attention projections, 128 to 8192 tokens), to show
where the 2:4 kernels pay and where they do not.

    .venv/bin/python bench/bench_semi_structured.py [--backend cusparselt|cutlass]
        [--dtype float16|bfloat16] [--rounds 50] [--batch 16] [--seq 128] [--sweep] [--json out.json]

Prints the GPU, CUDA, torch and cuSPARSELt versions first. Without a CUDA
GPU of compute capability 8.0+ it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys

import torch


def _die(message: str) -> None:
    print(f"bench_semi_structured: {message}", file=sys.stderr)
    sys.exit(2)


def _require_gpu() -> None:
    if not torch.cuda.is_available():
        _die("no CUDA GPU visible (torch.cuda.is_available() is False); "
                 f"this torch is {torch.__version__}. Run it on an Ampere-or-newer GPU with a CUDA build of torch.")
    cap = torch.cuda.get_device_capability()
    if cap < (8, 0):
        _die(f"{torch.cuda.get_device_name()} has compute capability {cap[0]}.{cap[1]}; "
                 "2:4 sparse tensor cores need 8.0 or newer")


def _machine() -> dict:
    cusparselt = getattr(torch.backends, "cusparselt", None)
    return {"gpu": torch.cuda.get_device_name(), "capability": ".".join(map(str, torch.cuda.get_device_capability())),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cusparselt": cusparselt.version() if cusparselt and cusparselt.is_available() else None}


def _time_pair(dense, sparse, rounds: int) -> tuple[list[float], list[float]]:
    from sparsecc.backends.torch_semi_structured.measure import cuda_event_times

    times = cuda_event_times({"dense": dense, "sparse": sparse}, rounds)
    return times["dense"], times["sparse"]


def _row(label: str, mode: str, dense: list[float], sparse: list[float]) -> dict:
    from sparsecc.benchmarking.stats import bootstrap_ratio, verdict

    r = bootstrap_ratio(dense, sparse, paired=True)
    dm, sm = statistics.median(dense), statistics.median(sparse)
    print(f"| {label} | {mode} | {dm:.4f} | {sm:.4f} | x{r['ratio']:.3f} ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}) | "
          f"{verdict(r['ci95'])} |", flush=True)
    return {"case": label, "mode": mode, "dense_ms_p50": dm, "sparse_ms_p50": sm, "speedup": r}


def _rows(label: str, dense, sparse, rounds: int) -> list[dict]:
    """Eager and CUDA-graph rows for two zero-argument callables (inside inference mode)."""
    rows = [_row(label, "eager", *_time_pair(dense, sparse, rounds))]
    from sparsecc.backends.torch_semi_structured.measure import graphed

    try:
        graphs = graphed(dense), graphed(sparse)
    except Exception as e:  # a kernel that cannot be captured: say so, keep the eager row
        print(f"| {label} | CUDA graph | capture failed: {type(e).__name__}: {str(e)[:120]} | | | |", flush=True)
        return rows
    rows.append(_row(label, "CUDA graph", *_time_pair(*graphs, rounds)))
    return rows


def _prune_linears(model: torch.nn.Module) -> None:
    from sparsecc.testing import prune_

    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            prune_(m.weight.data, "2:4")


# (out_features, in_features, tokens) for --sweep: BERT-base FFN, Llama 4096-wide projections and FFN.
SWEEP = [(3072, 768, 2048), (768, 3072, 2048), (4096, 4096, 128), (4096, 4096, 512), (4096, 4096, 8192),
         (11008, 4096, 2048), (4096, 11008, 2048), (14336, 4096, 4096), (4096, 14336, 4096)]


def bench_linear(dtype: torch.dtype, backend: str, rounds: int, out: int = 4096, inp: int = 4096,
                 tokens: int = 2048) -> list[dict]:
    from sparsecc.backends.torch_semi_structured import swap_semi_structured

    torch.manual_seed(0)
    dense = torch.nn.Linear(inp, out).to("cuda", dtype).eval()
    _prune_linears(dense)
    sparse = copy.deepcopy(dense)
    report = swap_semi_structured(sparse, backend)
    if not report.swapped:
        _die(f"the {out}x{inp} linear was not swapped: {report.dense}")
    x = torch.randn(tokens, inp, device="cuda", dtype=dtype)
    with torch.inference_mode():
        err = (dense(x).float() - sparse(x).float()).abs().max().item()
        rows = _rows(f"linear {out}x{inp}, {tokens} tokens, {str(dtype)[6:]}", lambda: dense(x), lambda: sparse(x),
                     rounds)
    for row in rows:
        row.update(max_abs_err=err, tflops_dense=2 * out * inp * tokens / row["dense_ms_p50"] / 1e9)
    return rows


def bench_bert(dtype: torch.dtype, backend: str, rounds: int, batch: int, seq: int, measured: bool = False) -> list[dict]:
    """``measured``: swap only the linears whose 2:4 kernel was timed faster at batch x seq tokens."""
    from sparsecc.backends.torch_semi_structured import swap_semi_structured
    from sparsecc.models.bert import BertEncoder

    torch.manual_seed(0)
    dense = BertEncoder(vocab_size=30522, hidden=768, layers=12, heads=12, ffn=3072).to("cuda", dtype).eval()
    _prune_linears(dense)
    sparse = copy.deepcopy(dense)
    report = swap_semi_structured(sparse, backend, tokens=batch * seq if measured else None)
    ids = torch.randint(0, 30522, (batch, seq), device="cuda")
    mask = torch.ones(batch, seq, dtype=torch.long, device="cuda")
    with torch.inference_mode():
        err = (dense(ids, mask).float() - sparse(ids, mask).float()).abs().max().item()
        how = "measured selection: " if measured else ""
        rows = _rows(f"BERT-base encoder, batch {batch} x seq {seq}, {str(dtype)[6:]} ({how}{report.summary()})",
                     lambda: dense(ids, mask), lambda: sparse(ids, mask), rounds)
    for row in rows:
        row.update(max_abs_err=err, swap=report.to_dict())
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("cusparselt", "cutlass"), default="cusparselt")
    ap.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16")
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--sweep", action="store_true", help="also time single linears of other shapes (see SWEEP)")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    _require_gpu()
    dtype = getattr(torch, a.dtype)
    machine = _machine()
    print(f"{machine['gpu']} (sm {machine['capability']}), CUDA {machine['cuda']}, torch {machine['torch']}, "
          f"cuSPARSELt {machine['cusparselt']}; backend {a.backend}; {a.rounds} interleaved rounds\n")
    print("| case | mode | dense p50 ms | 2:4 p50 ms | speedup (95% CI) | verdict |\n|---|---|---|---|---|---|")
    rows = bench_linear(dtype, a.backend, a.rounds) + bench_bert(dtype, a.backend, a.rounds, a.batch, a.seq)
    rows += bench_bert(dtype, a.backend, a.rounds, a.batch, a.seq, measured=True)
    if a.sweep:
        for out, inp, tokens in SWEEP:
            rows += bench_linear(dtype, a.backend, a.rounds, out, inp, tokens)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine, "backend": a.backend, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()

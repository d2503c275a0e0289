"""Block-sparse attention on a GPU through FlexAttention, against dense attention, interleaved.

Per sequence length and kept mass ``tau``: q, k, v of SmolLM2-135M's attention
shape (9 query heads sharing 3 key/value heads, head dim 64, causal) filled
with random values whose keys carry a few strong directions (so pooled scores
separate blocks, as in trained models); the block mask from
`sparsecc.kernels.attention.select_blocks`; then, timed interleaved (CUDA
events, medians of ``--rounds``): dense ``scaled_dot_product_attention``
(PyTorch's flash/efficient kernels), compiled FlexAttention with every visible
block (``tau = 1``), and compiled FlexAttention over the kept blocks
(`sparsecc.kernels.flex_attention.flex_block_attention`). The block selection
is timed apart (it is reused across calls with ``reuse``). Output error against
the dense reference over the same kept blocks is printed for each row.

    python bench/bench_flex_attention.py --lengths 2048 4096 8192 --taus 0.95 0.9 0.8 --out flex.json

``--device cpu`` runs the same steps eagerly on small sizes (a smoke test of
the script; CPU times mean nothing here).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def inputs(seq: int, device: str, heads: int = 9, kv_heads: int = 3, dim: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, seq, dim, generator=g)
    k = torch.randn(1, kv_heads, seq, dim, generator=g)
    topics = torch.randn(8, dim, generator=g) * 3  # a few directions that queries and keys share
    k += topics[torch.randint(0, 8, (seq,), generator=g)]
    q += topics[torch.randint(0, 8, (seq,), generator=g)]
    v = torch.randn(1, kv_heads, seq, dim, generator=g)
    dt = torch.float16 if device == "cuda" else torch.float32
    return [t.to(device, dt) for t in (q, k, v)]


def time_interleaved(fns: dict[str, Callable[[], Any]], rounds: int, device: str) -> dict[str, float]:
    """Median milliseconds per function, the functions called in turn every round (CUDA events on a GPU)."""
    for f in fns.values():  # warm-up (and compilation)
        f()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))
        for k in order:
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fns[k]()
                end.record()
                torch.cuda.synchronize()
                samples[k].append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fns[k]()
                samples[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    p.add_argument("--taus", type=float, nargs="+", default=[0.95, 0.9, 0.8])
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU: run with --device cpu for a smoke test")

    from sparsecc.kernels.attention import kept_fraction, reference_block_attention, select_blocks
    from sparsecc.kernels.flex_attention import flex_available, flex_block_attention

    if not flex_available():
        sys.exit(f"torch {torch.__version__} has no FlexAttention")
    compiled = args.device == "cuda"
    machine = {"python": platform.python_version(), "torch": torch.__version__, "device": args.device,
               "gpu": torch.cuda.get_device_name() if compiled else platform.processor()}
    print(json.dumps(machine), file=sys.stderr)
    rows = []
    for seq in args.lengths:
        q, k, v = inputs(seq, args.device)
        scale = q.shape[-1] ** -0.5
        dense = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)  # noqa: E731
        every = select_blocks(q, k, None, True, scale, args.block, 1.0)
        fns = {"sdpa dense": dense,
               "flex tau=1": lambda: flex_block_attention(q, k, v, None, True, scale, args.block, every,
                                                          compiled=compiled)}
        kept = {}
        for tau in args.taus:
            kept[tau] = select_blocks(q, k, None, True, scale, args.block, tau)
            fns[f"flex tau={tau}"] = (lambda m=kept[tau]: flex_block_attention(q, k, v, None, True, scale, args.block,
                                                                               m, compiled=compiled))
        med = time_interleaved(fns, args.rounds, args.device)
        sel = time_interleaved({"select": lambda: select_blocks(q, k, None, True, scale, args.block, args.taus[-1])},
                               max(3, args.rounds // 5), args.device)["select"]
        for tau in args.taus:
            got = flex_block_attention(q, k, v, None, True, scale, args.block, kept[tau], compiled=compiled).float()
            want = reference_block_attention(q.float(), k.float(), v.float(), None, True, scale, args.block, kept[tau])
            err = float((got - want).abs().max() / want.abs().max())
            row = {"seq": seq, "tau": tau, "kept": kept_fraction(kept[tau].cpu(), seq, seq, args.block, True),
                   "sdpa_ms": med["sdpa dense"], "flex_dense_ms": med["flex tau=1"],
                   "flex_sparse_ms": med[f"flex tau={tau}"], "select_ms": sel, "rel_err_vs_reference": err,
                   "speedup_vs_sdpa": med["sdpa dense"] / med[f"flex tau={tau}"]}
            rows.append(row)
            print(f"seq {seq} tau {tau}: kept {row['kept']:.2f}, sdpa {row['sdpa_ms']:.3f} ms, flex dense "
                  f"{row['flex_dense_ms']:.3f} ms, flex sparse {row['flex_sparse_ms']:.3f} ms "
                  f"({row['speedup_vs_sdpa']:.2f}x sdpa), select {sel:.3f} ms, rel err {err:.1e}")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine, "settings": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

"""Block-sparse attention on MiniLM / SmolLM2: attention-op time, kept blocks, end-to-end time, quality.

For each length the model is exported at ``[1, L]`` tokens of the evaluation
half of ``lee_background`` (`sparsecc.data.lm_windows`), rewritten by
`BlockSparseAttentionPass` at each ``tau`` and moved to the C++ kernel by the
torch-sparse rewrite. Measured, with one thread, interleaved
(`sparsecc.core.timing.time_interleaved`):

- attention-op time over the timed layers, on the layers' real q/k/v/mask:
  the exported eager form (matmul-softmax-matmul), torch's SDPA (with the
  model's mask; for a causal model ``is_causal=True``, which skips the upper
  triangle, the strongest dense baseline) and, per tau, block selection plus
  the kernel;
- the kept fraction of the (causally) visible query-key entries, over all layers;
- the whole forward: the dense exported program against the rewritten ones;
- quality against dense: MiniLM the cosine of the last hidden states (per
  token, and of the mean-pooled embedding); SmolLM2 the perplexity of the windows.

    flock /tmp/sparsecc-bench.lock env HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_block_sparse_attention.py \\
        --model smollm2 --lengths 1024 --taus 1.0 0.95 0.9 0.8 --windows 2 --out bench/results/bsa_smollm2_1024.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import sparsecc.kernels as kernels
from sparsecc.backends.torch_sparse.rewrite_block_sparse_attention import RewriteBlockSparseAttentionPass
from sparsecc.core.capture import capture
from sparsecc.core.recording import record_values
from sparsecc.core.timing import time_interleaved
from sparsecc.data import lm_windows
from sparsecc.kernels.attention import kept_fraction, select_blocks
from sparsecc.models import get_model
from sparsecc.passes import BlockSparseAttentionPass

OP = torch.ops.sparsecc.block_sparse_attention.default


def _export(spec, ids):
    kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return capture(spec.model, (), kw), kw


def _record(program, kw):
    """q, k, v, mask, is_causal, scale of every attention (through the pass at tau 1, which keeps all)."""
    values = {}
    module = BlockSparseAttentionPass(64, 1.0)(program).program.module()
    nodes = [n for n in module.graph.nodes if n.target == OP]
    flat = [a for n in nodes for a in n.args[:4] if isinstance(a, torch.fx.Node)]
    shared = {}  # one tensor per storage: every layer reads the same mask, as in the forward itself

    def keep(i, v):
        values[i] = shared.setdefault((v.data_ptr(), tuple(v.shape)), v.detach())

    record_values(module, flat, keep)
    with torch.no_grad():
        module(**kw)
    out, i = [], 0
    for n in nodes:
        t = []
        for a in n.args[:4]:
            if isinstance(a, torch.fx.Node):
                t.append(values[i])
                i += 1
            else:
                t.append(None)
        out.append((*t, n.args[4], n.args[5]))
    return out


def _causal(mask, L):
    """Whether the recorded additive mask hides exactly the upper triangle (a causal model, no padding)."""
    if mask is None:
        return False
    hidden = (mask <= -1e30).reshape(-1, L, L)[0]
    return bool(torch.equal(hidden, torch.ones(L, L, dtype=torch.bool).triu(1)))


def op_timing(sites, L, taus, block, layers, rounds, sink=False):
    causal = _causal(sites[0][3], L)

    def eager():
        for i in layers:
            q, k, v, m, _, scale = sites[i]
            rep = q.shape[1] // k.shape[1]
            kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
            s = q @ kk.transpose(2, 3) * scale
            torch.softmax(s + m if m is not None else s, -1) @ vv

    def sdpa():
        for i in layers:
            q, k, v, m, _, scale = sites[i]
            gqa = q.shape[1] != k.shape[1]
            if causal:
                F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
            else:
                F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale, enable_gqa=gqa)

    def sparse(tau):
        def run():
            for i in layers:
                q, k, v, m, is_causal, scale = sites[i]
                kept = select_blocks(q, k, m, is_causal, scale, block, tau, sink)
                torch.ops.sparsecc.block_attention(q, k, v, m, is_causal, scale, block, kept)
        return run

    def select_only():
        for i in layers:
            q, k, v, m, is_causal, scale = sites[i]
            select_blocks(q, k, m, is_causal, scale, block, min(taus), sink)

    variants = {"eager": eager, "sdpa": sdpa, **{f"tau={t:g}": sparse(t) for t in taus}, "select": select_only}
    med = {}
    if rounds:
        with torch.no_grad():
            med = time_interleaved(variants, warmup=1, rounds=rounds).medians()
    kept = {}
    for t in taus:
        fr = [kept_fraction(select_blocks(q, k, m, c, s, block, t, sink), L, L, block, is_causal=causal)
              for q, k, v, m, c, s in sites]
        kept[f"tau={t:g}"] = sum(fr) / len(fr)
    return {"causal": causal, "timed_layers": list(layers), "ms": {k: v * 1e3 for k, v in med.items()},
            "kept_fraction": kept}


def _forward_out(module, kw):
    with torch.no_grad():
        out = module(**kw)
    if hasattr(out, "to_tuple"):  # a transformers ModelOutput
        out = out.to_tuple()
    return (out[0] if isinstance(out, (tuple, list)) else out).float()


def quality(name, modules, windows):
    out = {k: {} for k in modules}
    nll = {k: 0.0 for k in modules}
    cos_tok = {k: 0.0 for k in modules}
    cos_emb = {k: 0.0 for k in modules}
    count = 0
    for w in windows:
        ids = w[None]
        kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        dense = _forward_out(modules["dense"], kw)
        for k, mod in modules.items():
            y = dense if k == "dense" else _forward_out(mod, kw)
            if name == "smollm2":
                lp = torch.log_softmax(y[0, :-1].double(), -1)
                nll[k] -= float(lp.gather(-1, ids[0, 1:, None]).sum())
            else:
                cos_tok[k] += float(F.cosine_similarity(y[0], dense[0], dim=-1).mean())
                cos_emb[k] += float(F.cosine_similarity(y[0].mean(0), dense[0].mean(0), dim=0))
        count += 1
    tokens = count * (windows.shape[1] - 1)
    for k in modules:
        if name == "smollm2":
            out[k] = {"perplexity": math.exp(nll[k] / tokens)}
        else:
            out[k] = {"cosine_tokens": cos_tok[k] / count, "cosine_embedding": cos_emb[k] / count}
    return out


def run_length(name, spec, L, args):
    tok = spec.extras["tokenizer"]
    windows = lm_windows(tok, "evaluation", window=L, n=max(1, args.windows))
    t0 = time.perf_counter()
    program, kw = _export(spec, windows[:1])
    sites = _record(program, kw)
    n_layers = len(sites)
    layers = list(range(0, n_layers, max(1, n_layers // args.timed_layers)))[: args.timed_layers]
    result = {"length": L, "layers": n_layers, "block": args.block, "sink": args.sink}
    result["op"] = op_timing(sites, L, args.taus, args.block, layers, 0 if args.no_timing else args.rounds, args.sink)
    print(json.dumps(result["op"]), flush=True)
    del sites
    modules = {"dense": program.module()}
    for t in args.taus:
        sparse = BlockSparseAttentionPass(args.block, t, sink=args.sink)(program).program
        modules[f"tau={t:g}"] = RewriteBlockSparseAttentionPass()(sparse).program.module()
    if not args.no_quality:
        result["quality"] = quality(name, modules, windows)
    if args.e2e:
        variants = {k: (lambda m=m: _forward_out(m, kw)) for k, m in modules.items()}
        med = time_interleaved(variants, warmup=1, rounds=args.e2e_rounds).medians()
        result["e2e_ms"] = {k: v * 1e3 for k, v in med.items()}
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("minilm", "smollm2"), default="smollm2")
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--taus", type=float, nargs="+", default=[1.0, 0.95, 0.9, 0.8])
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--windows", type=int, default=2, help="evaluation windows per length (quality)")
    ap.add_argument("--sink", action="store_true", help="always keep the first key block (an attention sink)")
    ap.add_argument("--no-timing", action="store_true", help="quality and kept fraction only")
    ap.add_argument("--no-quality", action="store_true", help="timing and kept fraction only")
    ap.add_argument("--timed-layers", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--e2e", action="store_true", help="also time the whole forward")
    ap.add_argument("--e2e-rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    kernels.load()
    spec = get_model(args.model)
    results = {"model": args.model, "threads": 1, "taus": args.taus, "runs": []}
    for L in args.lengths:
        r = run_length(args.model, spec, L, args)
        results["runs"].append(r)
        print(json.dumps(r, indent=1), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""Data-parallel SparseGPT calibration: one process against torchrun ranks, and bytes sent per layer.

Runs `sparsify` (SparseGPT 2:4, sequential calibration) on MODEL once in one
process (one intra-op thread, as each torchrun rank has) and once under
``torchrun --nproc-per-node N`` (gloo, loopback); prints the calibration time
of each, the speed-up, whether the weights are equal bit for bit, and the
bytes each layer cost in collectives (statistics reduced, weights and masks
broadcast).

    flock /tmp/sparsecc-bench.lock .venv/bin/python bench/bench_distributed.py --model minilm --samples 16 --seq-len 64
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(model: str, samples: int, seq_len: int, out: str) -> None:
    import torch

    from sparsecc.core.capture import capture
    from sparsecc.flows.sparsify import sparsify
    from sparsecc.models.resolve import resolve_model
    from sparsecc.plan.calibrate import calibration_for
    from sparsecc.plan.distributed import start_ranks

    ranks = start_ranks() if "WORLD_SIZE" in os.environ else None
    spec = resolve_model(model)
    program = capture(spec.model, spec.example_args, spec.example_kwargs, spec.dynamic_shapes)
    data = calibration_for(spec, samples, seq_len)
    recipe = {"pattern": "2:4", "criterion": "sparsegpt", "layers": {"min_params": 4096},
              "calibration": {"samples": samples, "seq_len": seq_len, "sequential": True}}
    t0 = time.perf_counter()
    result = sparsify(program, recipe, fold=True, calibration=data, ranks=ranks)
    took = time.perf_counter() - t0
    rank = 0 if ranks is None else ranks.rank
    if rank == 0:
        torch.save({k: v.detach() for k, v in result.program.state_dict.items()}, out + ".pt")
        with open(out + ".json", "w") as f:
            json.dump({"seconds": took, "bytes": ranks.comm_bytes() if ranks else {}}, f)
    if ranks is not None:
        ranks.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.model, args.samples, args.seq_len, args.worker)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    common = [__file__, "--model", args.model, "--samples", str(args.samples), "--seq-len", str(args.seq_len)]
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
        s.close()
        subprocess.run([sys.executable, *common, "--worker", f"{tmp}/one"], env=env, check=True)
        subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", str(args.ranks),
                        "--master-addr", "127.0.0.1", "--master-port", port, *common, "--worker", f"{tmp}/dist"],
                       env=env, check=True)
        import torch

        one, dist = (json.loads(Path(f"{tmp}/{n}.json").read_text()) for n in ("one", "dist"))
        a, b = torch.load(f"{tmp}/one.pt"), torch.load(f"{tmp}/dist.pt")
        equal = sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    print(f"# {args.model}, SparseGPT 2:4 sequential, {args.samples} x {args.seq_len} tokens, "
          f"{os.cpu_count()} cores (shared with other jobs), one intra-op thread per process")
    print(f"1 process: {one['seconds']:.1f} s; {args.ranks} ranks: {dist['seconds']:.1f} s; "
          f"speed-up {one['seconds'] / dist['seconds']:.2f}x; weights equal bit for bit: {equal}")
    per = dist["bytes"]
    print(f"collectives: {sum(per.values()) / 1e6:.1f} MB over {len(per)} layers; per layer:")
    print("| layer | bytes |\n|---|---:|")
    for k, n in per.items():
        print(f"| {k} | {n:,} |")


if __name__ == "__main__":
    main()

"""Time each stage of `sparsecc compile` per model and target.

Stages: capture (torch.export), sparsify (masks, insert, fold, verify), and
per target the backend's own stages (ONNX: export, cleanup, provenance,
save; ExecuTorch: edge lowering, XNNPACK delegation, serialisation), then
pattern verification in the artifact and parity runs.

    .venv/bin/python bench/bench_compile.py [--models mlp,resnet,...] [--targets onnx,executorch] [--recipe recipes/2of4.yaml]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from sparsecc.flows.compile import compile
from sparsecc.core.machine import machine_info
from sparsecc.models import REFERENCE_MODELS, get_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join([*REFERENCE_MODELS, "minilm", "efficientnet-lite0"]))
    ap.add_argument("--targets", default="onnx,executorch")
    ap.add_argument("--recipe", default="recipes/2of4.yaml")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    info = machine_info()
    print(f"# machine: {info['cpu']} ({info['cores']} cores, load {info['load_avg_1m']}), "
          f"torch {info['versions'].get('torch')}, onnx {info['versions'].get('onnx')}, "
          f"executorch {info['versions'].get('executorch')}, recipe {args.recipe}")
    print("| model | target | capture | sparsify | lowering stages | lower total | verify pattern | parity | bundle size |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|")
    rows = []
    for name in args.models.split(","):
        for target in args.targets.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                r = compile(get_model(name), args.recipe, Path(tmp) / "b", targets=[target])
                tr = r.targets[target]
                stages = {k.removeprefix("lower."): v for k, v in tr.timings.items() if k.startswith("lower.")}
                size = sum(tr.artifact.to_dict()["sizes"].values())
            row = {"model": name, "target": target, "capture_s": r.timings["capture"],
                   "sparsify_s": r.timings["sparsify"], "stages_s": stages, "lower_s": tr.timings["lower"],
                   "verify_pattern_s": tr.timings["verify_pattern"], "parity_s": tr.timings["parity"],
                   "bytes": size}
            rows.append(row)
            st = ", ".join(f"{k} {v:.2f}" for k, v in stages.items()) or "-"
            print(f"| {name} | {target} | {row['capture_s']:.2f} s | {row['sparsify_s']:.2f} s | {st} | "
                  f"{row['lower_s']:.2f} s | {row['verify_pattern_s']:.2f} s | {row['parity_s']:.2f} s | "
                  f"{size / 1e6:.2f} MB |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

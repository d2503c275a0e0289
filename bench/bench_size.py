"""Artifact sizes by sparsity: ONNX with dense vs sparse initializers, .pte raw vs zstd.

Zeros buy file size even where they buy no time. For each model and
unstructured sparsity, compile to ONNX (dense initializers, then sparse
ones) and ExecuTorch (raw .pte and its zstd copy) and report bytes and
ratios to the dense model's files. Parity and pattern checks run as in every
compile.

    .venv/bin/python bench/bench_size.py [--models minilm,mlp] [--sparsities 0,0.5,0.9] [--no-embeddings]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from sparsecc import capture
from sparsecc.flows.compile import compile
from sparsecc.core.machine import machine_info
from sparsecc.models import get_model


def sizes(spec, program, sparsity: float, tmp: Path, embeddings: bool) -> dict[str, int]:
    recipe = None if sparsity == 0 else {
        "pattern": "unstructured", "sparsity": sparsity, "layers": {"include_embeddings": embeddings}}
    out: dict[str, int] = {}
    for label, sparse_init in (("onnx", False), ("onnx_sparse_init", True)):
        r = compile(spec, recipe, tmp / label, targets=["onnx"], program=program, dense_reference=False,
                    sparse_initializers=sparse_init, force=True)
        out[label] = sum(r.manifest["targets"]["onnx"]["artifact"]["sizes"].values())
    r = compile(spec, recipe, tmp / "et", targets=["executorch"], program=program, dense_reference=False, force=True)
    s = r.manifest["targets"]["executorch"]["artifact"]["sizes"]
    out["pte"], out["pte_zst"] = s["model"], s["compressed"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm,mlp")
    ap.add_argument("--sparsities", default="0,0.5,0.9")
    ap.add_argument("--no-embeddings", action="store_true",
                    help="leave embedding tables dense (MiniLM's word embeddings are half its weights)")
    args = ap.parse_args()
    info = machine_info()
    print(f"# {info['cpu']}, onnx {info['versions'].get('onnx')}, executorch {info['versions'].get('executorch')}; "
          f"embedding tables {'dense' if args.no_embeddings else 'pruned too'}")
    print("| model | unstructured sparsity | ONNX | ONNX, sparse initializers | .pte | .pte.zst |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        spec = get_model(name)
        program = capture(spec.model, spec.example_args, spec.example_kwargs, spec.dynamic_shapes)
        base = None
        for sp in (float(x) for x in args.sparsities.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                s = sizes(spec, program, sp, Path(tmp), not args.no_embeddings)
            base = base or s
            # ratios against the dense model's plain file of the same format
            cell = lambda k, ref: f"{s[k] / 1e6:.2f} MB ({s[k] / base[ref]:.2f}x)"  # noqa: E731
            print(f"| {name} | {sp:.0%} | {cell('onnx', 'onnx')} | {cell('onnx_sparse_init', 'onnx')} | "
                  f"{cell('pte', 'pte')} | {cell('pte_zst', 'pte')} |", flush=True)


if __name__ == "__main__":
    main()

"""The README.md written into each bundle: its artifacts, how to verify and how to run each one."""

from __future__ import annotations

from typing import Any

__all__ = ["bundle_readme"]


def bundle_readme(name: str, m: dict[str, Any]) -> str:
    """The README.md of a bundle from its manifest (as a dict): what it holds, how to check and run it."""
    lines = [f"# sparsecc bundle: {name or 'model'}", ""]
    s = m.get("sparsity")
    if s:
        sm = s["summary"]
        lines += [f"Recipe: `{m['recipe']['pattern']}`; {sm['sparse_layers']}/{sm['prunable_layers']} layers sparse, "
                  f"{sm['overall_sparsity']:.1%} of prunable weights are zero.", ""]
    ins = ", ".join(f"`{i['name']}` {i['dtype']}{i['shape']}" for i in m["inputs"])
    lines += [f"Inputs (in this order): {ins}. Named dims are dynamic; `manifest.json` has their ranges.", ""]
    lines += ["## Artifacts", ""]
    for t, d in m["targets"].items():
        files = ", ".join(f"`{t}/{f}`" for f in d["artifact"]["files"].values())
        lines += [f"- **{t}**: {files}; pattern verified in the artifact: {d['pattern_verification']['ok']}; "
                  f"parity with the PyTorch program: {d['parity']['ok']}"]
    lines += ["", "Check this folder at any time with `sparsecc verify .`: file hashes (`manifest.json` records each "
              "file's sha256), each weight's pattern in each artifact, and parity against the stored reference "
              "outputs (`inputs/reference.npz`)."]
    lines += ["", "## Run", "", "```python"]
    if "onnx" in m["targets"]:
        lines += ["import numpy as np, onnxruntime as ort",
                  "sess = ort.InferenceSession('onnx/model.onnx', providers=['CPUExecutionProvider'])",
                  "x = np.load('inputs/example.npz')",
                  "feeds = {i.name: x[f'arr_{n}'] for n, i in enumerate(sess.get_inputs())}",
                  "outputs = sess.run(None, feeds)", ""]
    if "onnx-custom-ops" in m["targets"]:  # needs only onnxruntime + numpy, and the bundled library
        lines += ["import numpy as np, onnxruntime as ort  # sparse layers run sparsecc.SparseMatMul",
                  "opts = ort.SessionOptions(); opts.register_custom_ops_library('onnx-custom-ops/libsparsecc_ort.so')",
                  "sess = ort.InferenceSession('onnx-custom-ops/model.onnx', opts, providers=['CPUExecutionProvider'])",
                  "x = np.load('inputs/example.npz')",
                  "outputs = sess.run(None, {i.name: x[f'arr_{n}'] for n, i in enumerate(sess.get_inputs())})", ""]
    if "executorch" in m["targets"]:
        lines += ["import numpy as np, torch",
                  "from executorch.runtime import Runtime",
                  "method = Runtime.get().load_program('executorch/model.pte').load_method('forward')",
                  "x = np.load('inputs/example.npz')",
                  "outputs = method.execute([torch.from_numpy(x[k]) for k in sorted(x.files, key=lambda k: int(k[4:]))])", ""]
    if "executorch-custom-ops" in m["targets"]:  # the bundled kernel library registers sparsecc's ops first
        lines += ["import ctypes, numpy as np, torch",
                  "from executorch.runtime import Runtime",
                  "ctypes.CDLL('executorch-custom-ops/libsparsecc_executorch.so', mode=ctypes.RTLD_GLOBAL)",
                  "program = Runtime.get().load_program('executorch-custom-ops/model.pte')  # keep it alive",
                  "method = program.load_method('forward')",
                  "x = np.load('inputs/example.npz')",
                  "outputs = method.execute([torch.from_numpy(x[k]) for k in sorted(x.files, key=lambda k: int(k[4:]))])", ""]
    if "torch-sparse" in m["targets"]:
        lines += ["from sparsecc.backends.torch_sparse import load_sparse_program  # builds the CPU kernels once",
                  "module = load_sparse_program('torch-sparse/program.pt2').module()  # per layer: torch-sparse/kernels.json",
                  ""]
    lines += ["import sparsecc",
              "program = sparsecc.load_program('program.pt2')  # the sparse PyTorch program",
              "```", "",
              ]
    if "tensorrt-bundle" in m["targets"]:
        lines += ["## TensorRT on the device", "",
                  "Copy this folder to the device (TensorRT 10 or 11, trtexec on PATH) and run "
                  "`tensorrt-bundle/build.sh` (`--help` for options). It builds a sparse and a dense FP16 engine, "
                  "checks their outputs against `golden.npz`, and leaves the logs, layer info and timings in "
                  "`tensorrt-bundle/build/`. Then `sparsecc bench . --backend tensorrt --out trt.json` says, per "
                  "layer, whether it ran 2:4 sparse and why not.", ""]
    return "\n".join(lines)

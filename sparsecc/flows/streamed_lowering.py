"""Lowering a sparse decoder checkpoint block by block, for models too large to export whole.

`lower_streamed_onnx` reads the sparse safetensors checkpoint that `sparsecc
prune-streamed` wrote (its ``sparsecc`` metadata gives the config, pattern and
the pruned tensors), captures one decoder block once (`DecoderBlock`, as the
pruning does) and, for each block in turn, reads its weights, swaps them into
the captured program, lowers it with the ONNX backend to
``blocks/block_NNN.onnx``, re-checks the pattern in the file's initializers
(the backend's ``verify_pattern``) and drops the weights. What is alive at
once is one block's weights, its ONNX graph and the captured program.

One file per block, not one shared graph with per-block weights: the graph of
a block is a few hundred KB against its MBs (SmolLM2) to GBs (7B) of weights,
so a shared graph would save little; ONNX binds initializers by name inside a
model, so sharing one graph would need a runtime that swaps initializers
(ONNX Runtime's ``add_initializer`` per session) and a bundle whose blocks
cannot be checked or run on their own. Each block file is self-contained: it
runs, and its pattern is checked, without the others.

The embedding lookup (``embedding.onnx``: ``Gather(table, input_ids)``) and
the final RMSNorm with the LM head (``head.onnx``: ``x * 1/sqrt(mean(x^2) +
eps) * norm_weight @ head^T``, a Gemm with transB on the table as stored; the
embedding table when tied) are built with ``onnx.helper``: a few operators
each. Their tables go to ``embedding.onnx.data`` / ``head.onnx.data``, copied
from the checkpoint a piece at a time in its dtype (a Cast to float32 in the
graph when that is 16-bit), so a vocabulary table larger than a block is never
held whole either. ``manifest.json`` names every file, their input and output
names and shapes, the batch and sequence ranges, and per block its sparsity
and pattern checks with the provenance of each weight (so
`verify_streamed_onnx` re-checks a bundle later). ``run_blocks.py`` (a copy of
`sparsecc.flows.streamed_runner`) chains them with ONNX Runtime without torch.

The bundle is written to a temporary folder beside ``out_dir`` and renamed
when complete: a failure leaves no half-written ``out_dir``.

Targets: ONNX only. ExecuTorch and TensorRT are refused with the reason
(`lower_streamed`; see docs/scale.md, "Lowering block by block").
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sparsecc.benchmarking.memory import peak_rss_mb, rss_mb
from sparsecc.core.ir import MaskSpec, SparsityPattern
from sparsecc.core.safetensors_io import CheckpointError
from sparsecc.errors import UsageError
from sparsecc.flows.streamed import BLOCK_PREFIX, captured_blocks

__all__ = ["lower_streamed", "lower_streamed_onnx", "verify_streamed_onnx", "streamed_parity", "LoweredBlocks",
           "TargetRefused", "REFUSED_TARGETS", "FORMAT"]

FORMAT = "sparsecc-streamed-onnx"
FORMAT_VERSION = 1
_OPSET = 18
_IR_VERSION = 10

# Why a target cannot take a block-by-block lowering here (the CLI prints these).
REFUSED_TARGETS = {
    "executorch": (
        "ExecuTorch per block is not built: the backend lowers one block to a .pte, and the installed "
        "executorch Python runtime (executorch.runtime.Runtime, which needs torch) could chain .pte programs "
        "by passing one method's output tensor to the next, but every block's .pte is planned for one upper "
        "bound of the sequence length, XNNPACK takes no sparse kernels (the zeros run dense), and the "
        "parity, pattern (weight index per .pte) and torch-free runner checks that make the ONNX bundle "
        "trustworthy do not exist for a chain of programs; use --lower-onnx"),
    "tensorrt": (
        "TensorRT is not available here (no tensorrt package and no GPU); build engines from the ONNX "
        "blocks instead: each blocks/block_NNN.onnx is a TensorRT-ready file (`trtexec --onnx=... "
        "--sparsity=enable`), its 2:4 eligibility recorded per block in manifest.json"),
}


class TargetRefused(UsageError):
    """A target that cannot take a block-by-block lowering; the message says why."""


@dataclass
class LoweredBlocks:
    out: Path
    manifest: dict[str, Any]
    seconds: float
    rss_start_mb: float
    peak_rss_mb: float
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "blocks": len(self.manifest["blocks"]), "files": self.manifest["files"],
                "seconds": self.seconds, "rss_start_mb": self.rss_start_mb, "peak_rss_mb": self.peak_rss_mb,
                "timings": self.timings}


def lower_streamed(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, target: str = "onnx",
                   **kwargs: Any) -> LoweredBlocks:
    """Lower ``checkpoint`` block by block to ``target``: ``onnx``; the others raise `TargetRefused`."""
    if target == "onnx":
        return lower_streamed_onnx(checkpoint, out_dir, **kwargs)
    if target in REFUSED_TARGETS:
        raise TargetRefused(f"--lower-{target}: {REFUSED_TARGETS[target]}")
    raise UsageError(f"block-by-block lowering to {target!r}: only onnx is supported")


def _sparse_info(path: Path) -> dict[str, Any]:
    from sparsecc.core.safetensors_io import SafetensorsReader
    from sparsecc.models.decoder_block import sparse_checkpoint_info

    if path.suffix != ".safetensors" or not path.is_file():
        raise CheckpointError(f"{path}: block-by-block lowering reads the sparse .safetensors checkpoint that "
                              "`sparsecc prune-streamed` wrote (not found or not a .safetensors file)")
    try:
        SafetensorsReader(path)
        info = sparse_checkpoint_info(path)
    except CheckpointError:
        raise
    except Exception as e:  # a header that does not parse
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    if info is None or "config" not in info or "tensors" not in info:
        raise CheckpointError(f"{path}: no sparsecc metadata; block-by-block lowering reads checkpoints written by "
                              "`sparsecc prune-streamed` (their header records the config and the pruned tensors)")
    return info


def _tensor_spec(name: str, shape: list[Any], dtype: str) -> dict[str, Any]:
    return {"name": name, "shape": list(shape), "dtype": dtype}


_ONNX_DTYPES = {torch.float32: 1, torch.float16: 10, torch.bfloat16: 16}  # TensorProto FLOAT, FLOAT16, BFLOAT16


def _streamed_table(ckpt: Any, name: str, init_name: str, data: Path) -> tuple[Any, list[Any]]:
    """An initializer whose bytes are copied from the checkpoint to ``data`` a piece at a time (never held
    whole), in the checkpoint's dtype; with a Cast to float32 when that dtype is not float32."""
    from onnx import TensorProto, helper

    dtype = ckpt.tensor_dtype(name)
    if dtype not in _ONNX_DTYPES:
        raise CheckpointError(f"{ckpt.path}: tensor {name!r} is {dtype}; block-by-block lowering takes float32, "
                              "float16 or bfloat16 tables")
    length = 0
    with open(data, "wb") as f:
        for chunk in ckpt.chunks(name):
            f.write(chunk)
            length += len(chunk)
    t = TensorProto()
    t.name, t.data_type = (init_name if dtype == torch.float32 else init_name + "_stored"), _ONNX_DTYPES[dtype]
    t.dims.extend(ckpt.tensor_shape(name))
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", data.name), ("offset", "0"), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    casts = [] if dtype == torch.float32 else [helper.make_node("Cast", [t.name], [init_name], to=TensorProto.FLOAT)]
    return t, casts


def _model(graph: Any) -> Any:
    from onnx import helper

    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=_IR_VERSION,
                             producer_name="sparsecc")


def _write_embedding(ckpt: Any, path: Path) -> list[str]:
    """``embedding.onnx``: ``hidden = Gather(embed_tokens, input_ids)``, the table in ``embedding.onnx.data``."""
    import onnx
    from onnx import TensorProto, helper

    hidden = ckpt.shape.hidden
    data = path.with_name(path.name + ".data")
    table, casts = _streamed_table(ckpt, "model.embed_tokens.weight", "embed_tokens", data)
    graph = helper.make_graph(
        casts + [helper.make_node("Gather", ["embed_tokens", "input_ids"], ["hidden"], axis=0, name="embed")],
        "embedding",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "seq", hidden])],
        [table])
    onnx.save_model(_model(graph), str(path))
    onnx.checker.check_model(str(path))
    return [path.name, data.name]


def _write_head(ckpt: Any, path: Path) -> list[str]:
    """``head.onnx``: ``logits = (x / sqrt(mean(x^2, -1) + eps) * norm_weight) @ head^T`` (Llama's RMSNorm in
    float32, then Gemm with transB on the [vocab, hidden] table as stored: no transposed copy), the table in
    ``head.onnx.data`` (the embedding table when tied)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = ckpt.shape
    data = path.with_name(path.name + ".data")
    source = "model.embed_tokens.weight" if shape.tie_embeddings else "lm_head.weight"
    table, casts = _streamed_table(ckpt, source, "lm_head", data)
    inits = [table,
             numpy_helper.from_array(ckpt.read("model.norm.weight").float().numpy(), "norm_weight"),
             numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
             numpy_helper.from_array(np.array([-1, shape.hidden], dtype=np.int64), "rows_shape"),
             numpy_helper.from_array(np.array([shape.vocab], dtype=np.int64), "vocab_dim"),
             numpy_helper.from_array(np.array(shape.rms_eps, dtype=np.float32), "eps")]
    nodes = casts + [
        helper.make_node("Mul", ["hidden", "hidden"], ["square"]),
        helper.make_node("ReduceMean", ["square", "last_axis"], ["variance"], keepdims=1),
        helper.make_node("Add", ["variance", "eps"], ["variance_eps"]),
        helper.make_node("Sqrt", ["variance_eps"], ["rms"]),
        helper.make_node("Reciprocal", ["rms"], ["inv_rms"]),
        helper.make_node("Mul", ["hidden", "inv_rms"], ["normed"]),
        helper.make_node("Mul", ["normed", "norm_weight"], ["scaled"]),
        helper.make_node("Reshape", ["scaled", "rows_shape"], ["rows"]),
        helper.make_node("Gemm", ["rows", "lm_head"], ["logit_rows"], transB=1, name="lm_head"),
        helper.make_node("Shape", ["hidden"], ["batch_seq"], start=0, end=2),
        helper.make_node("Concat", ["batch_seq", "vocab_dim"], ["logits_shape"], axis=0),
        helper.make_node("Reshape", ["logit_rows", "logits_shape"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "norm_head",
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "seq", shape.hidden])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", shape.vocab])], inits)
    onnx.save_model(_model(graph), str(path))
    onnx.checker.check_model(str(path))
    return [path.name, data.name]


_PROVENANCE_KEYS = ("initializer", "layout", "perm", "onnx_reduction_axis", "output_axis", "reduction_axis",
                    "onnx_shape", "torch_shape", "reason")


def _specs(info: dict[str, Any], i: int) -> list[MaskSpec]:
    """What each pruned weight of block ``i`` was asked to become (FQNs of the captured block)."""
    from sparsecc.models.decoder_checkpoint import block_prefix

    pattern = SparsityPattern.parse(info["pattern"])
    prefix = block_prefix(i)
    target = pattern.fixed_sparsity if pattern.fixed_sparsity is not None else float(info["sparsity"])
    return [MaskSpec(BLOCK_PREFIX + name[len(prefix):], pattern, target, criterion=info.get("criterion", ""))
            for name in sorted(info["tensors"]) if name.startswith(prefix)]


def _rename_external(model_path: Path, new_name: str) -> None:
    """Point the model's external tensors at ``new_name`` (the data file was renamed)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = new_name
    onnx.save_model(model, str(model_path))


def lower_streamed_onnx(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    force: bool = False,
    threads: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> LoweredBlocks:
    """Lower the sparse checkpoint ``checkpoint`` to ONNX block by block into ``out_dir``; see the module docstring.

    ``progress(done, total, text)`` is called after each block.
    """
    from sparsecc.backends import get_backend
    from sparsecc.backends.base import LowerOptions, LoweringError
    from sparsecc.models.decoder_checkpoint import open_decoder_checkpoint

    t_start = time.perf_counter()
    rss_start = rss_mb() or 0.0
    path, out = Path(checkpoint), Path(out_dir)
    if out.exists() and not force:
        raise UsageError(f"{out} exists; pass --force to replace it")
    info = _sparse_info(path)
    backend = get_backend("onnx")
    ckpt = open_decoder_checkpoint(path)  # the config from the metadata; every tensor's shape checked against it
    shape = ckpt.shape
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    timings: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        files = _write_embedding(ckpt, work / "embedding.onnx") + _write_head(ckpt, work / "head.onnx")
        timings["embedding_head"] = time.perf_counter() - t0

        blocks, block_seconds = [], []
        walk = captured_blocks(ckpt, torch.zeros(2, 8, shape.hidden), shape.max_positions, timings)
        for i, prefix, weights, program, t_block in walk:
            if i == 0:
                seq_range, batch_range = _ranges(program)
            t0 = time.perf_counter()
            scratch = work / "blocks" / f".lower_{i:03d}"
            artifact = backend.lower(program, scratch, LowerOptions(threads=threads))
            timings["lower"] = timings.get("lower", 0.0) + time.perf_counter() - t0
            t0 = time.perf_counter()
            specs = _specs(info, i)
            checks = backend.verify_pattern(artifact, specs)
            bad = [c for c in checks if not c.ok]
            if bad:
                raise LoweringError(f"{path}, block {i}: the lowered ONNX weights break the pattern: "
                                    + "; ".join(f"{c.fqn}: {c.reason}" for c in bad[:3]))
            timings["verify_pattern"] = timings.get("verify_pattern", 0.0) + time.perf_counter() - t0
            name = f"block_{i:03d}.onnx"
            shutil.move(str(artifact.path("model")), str(work / "blocks" / name))
            block_files = [f"blocks/{name}"]
            if "weights" in artifact.files:  # external data past 2 GB: renamed beside the block's file
                shutil.move(str(artifact.path("weights")), str(work / "blocks" / (name + ".data")))
                _rename_external(work / "blocks" / name, name + ".data")
                block_files.append(f"blocks/{name}.data")
            shutil.rmtree(scratch)
            files += block_files
            blocks.append(_block_record(i, block_files, artifact, checks, info, prefix, work))
            del weights, artifact, checks
            gc.collect()
            block_seconds.append(time.perf_counter() - t_block)
            if progress:
                mean = sum(block_seconds) / len(block_seconds)
                progress(i + 1, shape.layers, f"block {i} lowered in {block_seconds[-1]:.1f}s, "
                         f"~{mean * (shape.layers - i - 1):.0f}s left")
        del program, walk
        runner_src = Path(__file__).with_name("streamed_runner.py")
        shutil.copy2(runner_src, work / "run_blocks.py")
        files.append("run_blocks.py")
        manifest = _manifest(path, info, shape, seq_range, batch_range, blocks, block_seconds)
        files.append("manifest.json")
        manifest["files"] = sorted(files)
        (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(work, 0o777 & ~mask)  # mkdtemp's 0700 would outlive the rename
        _replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return LoweredBlocks(out, manifest, time.perf_counter() - t_start, rss_start, peak_rss_mb(),
                         {k: round(v, 3) for k, v in timings.items()})


def _block_record(i: int, block_files: list[str], artifact: Any, checks: list, info: dict[str, Any], prefix: str,
                  work: Path) -> dict[str, Any]:
    """One block's manifest entry: files, signature, sparsity, pattern checks, provenance, size."""
    masks = {k[len(prefix):]: v for k, v in info["tensors"].items() if k.startswith(prefix)}
    zeros = sum(m["numel"] - m["nonzero"] for m in masks.values())
    numel = sum(m["numel"] for m in masks.values())
    provenance = {fqn: {k: p[k] for k in _PROVENANCE_KEYS if k in p}
                  for fqn, p in artifact.meta["provenance"].items()}
    eligible = [e for e in artifact.meta.get("tensorrt_2_4", []) if e.get("eligible")]
    return {
        "index": i, "file": block_files[0], "files": block_files,
        "inputs": [s.to_dict() for s in artifact.inputs], "outputs": [s.to_dict() for s in artifact.outputs],
        "sparsity": {"zeros": zeros, "weights": numel, "fraction": zeros / max(numel, 1),
                     "by_tensor": {k: 1 - m["nonzero"] / max(m["numel"], 1) for k, m in masks.items()}},
        "pattern_checks": [{"fqn": c.fqn, "ok": c.ok, "achieved": c.achieved, "location": c.location,
                            "tensorrt_2_4": c.eligible} for c in checks],
        "tensorrt_2_4_eligible": len(eligible),
        "provenance": provenance,
        "bytes": sum((work / f).stat().st_size for f in block_files),
    }


def _manifest(path: Path, info: dict[str, Any], shape: Any, seq_range: Any, batch_range: Any,
              blocks: list[dict[str, Any]], block_seconds: list[float]) -> dict[str, Any]:
    """manifest.json (without its file list): the source, pattern, ranges, each part's signature and formula."""
    hidden_spec = ["batch", "seq", shape.hidden]
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "source": path.name, "model": info.get("model"),
        "pattern": info["pattern"], "sparsity": info.get("sparsity"), "criterion": info.get("criterion"),
        "config": shape.to_dict(), "seq_len": seq_range, "batch": batch_range, "opset": _OPSET,
        "embedding": {"file": "embedding.onnx", "files": ["embedding.onnx", "embedding.onnx.data"],
                      "inputs": [_tensor_spec("input_ids", ["batch", "seq"], "int64")],
                      "outputs": [_tensor_spec("hidden", hidden_spec, "float32")],
                      "formula": "hidden = embed_tokens[input_ids]"},
        "blocks": blocks,
        "head": {"file": "head.onnx", "files": ["head.onnx", "head.onnx.data"],
                 "inputs": [_tensor_spec("hidden", hidden_spec, "float32")],
                 "outputs": [_tensor_spec("logits", ["batch", "seq", shape.vocab], "float32")],
                 "formula": "logits = (hidden / sqrt(mean(hidden^2, -1) + rms_eps) * model.norm.weight) @ "
                            + ("model.embed_tokens.weight^T (tied)" if shape.tie_embeddings else "lm_head.weight^T")},
        "runner": "run_blocks.py",
        "sparsity_total": {"zeros": sum(b["sparsity"]["zeros"] for b in blocks),
                           "weights": sum(b["sparsity"]["weights"] for b in blocks)},
        "block_seconds": [round(s, 3) for s in block_seconds],
    }


def _ranges(program: Any) -> tuple[dict[str, int], dict[str, int]]:
    """The batch and sequence ranges the captured block accepts (its input's dims 0 and 1)."""
    x = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name not in
             set(program.graph_signature.inputs_to_parameters) | set(program.graph_signature.inputs_to_buffers)
             | set(program.graph_signature.inputs_to_lifted_tensor_constants))
    dims = x.meta["val"].shape
    out = []
    for d in dims[:2]:
        vr = program.range_constraints.get(getattr(d, "node", None) and d.node.expr)
        out.append({"min": int(vr.lower), "max": int(vr.upper)} if vr is not None else {"min": int(d), "max": int(d)})
    return out[1], out[0]


def _replace(work: Path, out: Path) -> None:
    """Rename the finished ``work`` to ``out``, replacing an older ``out`` only once the new one is complete."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(work, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def verify_streamed_onnx(bundle: str | os.PathLike) -> list[dict[str, Any]]:
    """Re-check every block file's pattern from its initializers (the recorded provenance); one entry per block.

    Raises `CheckpointError` naming a file the manifest lists that is missing.
    """
    import onnx

    from sparsecc.backends.onnx.patterns import check_patterns
    from sparsecc.flows.streamed_runner import load_manifest

    root = Path(bundle)
    manifest = load_manifest(root)
    missing = [f for f in manifest["files"] if not (root / f).is_file()]
    if missing:
        raise CheckpointError(f"{root}: files the manifest lists are missing: {', '.join(missing[:5])}")
    pattern = SparsityPattern.parse(manifest["pattern"])
    target = pattern.fixed_sparsity if pattern.fixed_sparsity is not None else float(manifest["sparsity"])
    results = []
    for b in manifest["blocks"]:
        model = onnx.load(str(root / b["file"]))
        specs = [MaskSpec(c["fqn"], pattern, target) for c in b["pattern_checks"]]
        checks = check_patterns(model, b["provenance"], specs)
        results.append({"file": b["file"], "ok": all(c.ok for c in checks) and len(checks) > 0,
                        "checked": len(checks), "achieved": [c.achieved for c in checks],
                        "failed": [f"{c.fqn}: {c.reason}" for c in checks if not c.ok]})
        del model
    return results


def streamed_parity(bundle: str | os.PathLike, checkpoint: str | os.PathLike, batch: int = 1, seq: int = 32,
                    seed: int = 0, threads: int | None = None) -> dict[str, Any]:
    """The chained ONNX logits against the whole-model PyTorch logits of the same sparse checkpoint.

    The whole model is loaded (`load_decoder_checkpoint`, as `sparsecc eval` and `sparsecc compile` load a
    sparse checkpoint), so this is for models that fit in memory: it checks the bundle, not the model.
    """
    from sparsecc.flows.streamed_runner import BlockChain
    from sparsecc.models.decoder_block import load_decoder_checkpoint
    from sparsecc.verify.parity import compare

    chain = BlockChain(bundle, threads)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, chain.manifest["config"]["vocab"], (batch, seq), generator=gen)
    t0 = time.perf_counter()
    got = torch.from_numpy(chain(ids.numpy()))
    onnx_s = time.perf_counter() - t0
    spec = load_decoder_checkpoint(checkpoint)
    with torch.no_grad():
        want = spec.model(ids).logits.float()
    del spec
    case = compare([got], [want], f"random ids [{batch}, {seq}]")
    case["onnx_seconds"] = onnx_s
    return case

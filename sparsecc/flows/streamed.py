"""Streamed layer-wise pruning: a decoder checkpoint pruned one block at a time, never loaded whole.

The embedding rows of the calibration tokens are read from the checkpoint;
then for each block in turn its weights are read, swapped into the block
captured once (`sparsecc.plan.block_pruning`), pruned on the hidden states the
already-pruned blocks before it produced, run to give the next block's
inputs, written to the output checkpoint and dropped. What is alive at once
is one block's weights, the calibration hidden states (in and out) with the
block's intermediate activations, and that block's Hessians.

The output is a safetensors file with the checkpoint's tensors under their
Hugging Face names (pruned weights in the source dtype; GGUF sources become
float32) and a ``sparsecc`` JSON entry in the header metadata: pattern,
sparsity, criterion, its options, the calibration, the model config, and per
pruned tensor its nonzeros and a mask fingerprint. It is written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from sparsecc.benchmarking.memory import peak_rss_mb, rss_mb
from sparsecc.core.capture import capture
from sparsecc.core.ir import SparsityPattern
from sparsecc.core.safetensors_io import CheckpointError, SafetensorsWriter
from sparsecc.errors import UsageError
from sparsecc.models.decoder_block import DecoderBlock
from sparsecc.models.decoder_checkpoint import (BLOCK_TENSORS, DecoderCheckpoint, DecoderShape, block_prefix,
                                                open_decoder_checkpoint, smollm2_gguf_path)
from sparsecc.plan.block_pruning import BlockPruning, set_block_weights

__all__ = ["StreamedOptions", "StreamedResult", "prune_streamed", "resolve_checkpoint", "memory_budget_mb",
           "calibration_tokens", "return_freed_memory", "captured_blocks", "BLOCK_PREFIX"]

FORMAT_VERSION = 1
BLOCK_PREFIX = "layer."  # the decoder layer's attribute in `DecoderBlock`: FQNs in the captured block


@dataclass
class StreamedOptions:
    pattern: str = "2:4"
    sparsity: float = 0.5  # ignored for N:M
    criterion: str = "sparsegpt"
    criterion_options: dict[str, Any] = field(default_factory=dict)  # SparseGPT: damp, blocksize
    samples: int = 64
    seq_len: int = 256
    micro_batch: int = 8  # calibration windows per forward call (as the in-memory path joins them)
    calibration: str = "lee"  # lee: the calibration half of lee_background; random: seeded token ids
    tokenizer: str | None = None  # a tokenizer folder, for lee calibration of a safetensors checkpoint
    seed: int = 0
    skip: tuple[str, ...] = ()  # weight names (suffixes) left dense


@dataclass
class StreamedResult:
    out: Path
    shape: DecoderShape
    block_seconds: list[float]
    masks: dict[str, dict[str, Any]]
    rss_start_mb: float  # when the call began
    rss_setup_mb: float  # once the checkpoint is open and the calibration tokens exist (the fixed costs)
    peak_rss_mb: float  # the process's high-water mark (VmHWM)
    budget_mb: float
    seconds: float
    timings: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "config": self.shape.to_dict(), "block_seconds": self.block_seconds,
                "rss_start_mb": self.rss_start_mb, "rss_setup_mb": self.rss_setup_mb, "peak_rss_mb": self.peak_rss_mb, "budget_mb": self.budget_mb,
                "seconds": self.seconds, "timings": self.timings, "tensors": len(self.masks)}


def return_freed_memory() -> None:
    """Have glibc hand large freed buffers back to the system at once (glibc only; elsewhere nothing).

    By default glibc raises its mmap threshold as buffers are freed, so later
    activations of a few MB come from a heap that fragments and keeps its peak:
    a fixed 128 KiB threshold keeps the resident set at what is alive.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not os.uname().sysname == "Linux":
        return
    try:
        ctypes.CDLL(name).mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def resolve_checkpoint(ref: str) -> tuple[Path, str | None]:
    """A checkpoint argument: a file, or ``smollm2`` (the GGUF file the zoo's SmolLM2 loads)."""
    if ref == "smollm2":
        return smollm2_gguf_path(), "smollm2"
    path = Path(ref)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {ref} (a .safetensors or .gguf file, or 'smollm2')")
    return path, "smollm2" if path.resolve() == _smollm2_or_none() else None


def _smollm2_or_none() -> Path | None:
    try:
        return smollm2_gguf_path().resolve()
    except ImportError:
        return None


def memory_budget_mb(shape: DecoderShape, samples: int, seq_len: int) -> dict[str, float]:
    """One block's float32 weights, calibration activations and Hessians, in MB (the target's yardstick).

    Activations: the hidden states into the block, the residual and the
    widest intermediate (the FFN's), for every window at once, as the solve of
    down_proj holds them. Hessians: q/k/v, o, gate/up and down in float32, and
    the float64 working set of the widest one's inverse Cholesky factor
    (SparseGPT's `inverse_hessian_factor` holds about five K x K float64
    arrays at once: the copy, the dampened copy, the identity, the factor, the
    inverse).
    """
    mb = 2.0**20
    rows = samples * seq_len
    weights = 4 * shape.block_params()
    acts = 4 * rows * (2 * shape.hidden + shape.ffn)
    hessians = 4 * (3 * shape.hidden**2 + shape.ffn**2)
    factor = 5 * 8 * max(shape.hidden, shape.ffn) ** 2
    return {"weights": weights / mb, "activations": acts / mb, "hessians": hessians / mb, "factor": factor / mb,
            "total": (weights + acts + hessians + factor) / mb}


def calibration_tokens(ckpt: DecoderCheckpoint, options: StreamedOptions) -> torch.Tensor:
    """``[samples, seq_len]`` token ids: lee_background's calibration half, or seeded random ids."""
    if options.calibration == "random":
        gen = torch.Generator().manual_seed(options.seed)
        return torch.randint(0, ckpt.shape.vocab, (options.samples, options.seq_len), generator=gen)
    if options.calibration != "lee":
        raise UsageError(f"calibration {options.calibration!r}: use lee or random")
    from transformers import AutoTokenizer

    from sparsecc.data import lm_windows

    if ckpt.source == "gguf":
        tok = AutoTokenizer.from_pretrained(str(ckpt.path.parent), gguf_file=ckpt.path.name)
    elif options.tokenizer:
        tok = AutoTokenizer.from_pretrained(options.tokenizer)
    else:
        raise UsageError(f"{ckpt.path}: calibration on lee_background needs a tokenizer: pass --tokenizer DIR "
                         "(a Hugging Face tokenizer folder), or --calibration random")
    return lm_windows(tok, "calibration", window=options.seq_len, n=options.samples)


def _embed(ckpt: DecoderCheckpoint, tokens: torch.Tensor, micro_batch: int) -> list[torch.Tensor]:
    """The calibration hidden states entering block 0, ``micro_batch`` windows per batch."""
    ids, inverse = torch.unique(tokens, return_inverse=True)
    rows = ckpt.read_rows("model.embed_tokens.weight", ids).float()
    return [rows[inverse[i:i + micro_batch]] for i in range(0, len(tokens), micro_batch)]


def _metadata(ckpt: DecoderCheckpoint, model: str | None, options: StreamedOptions, pruning: BlockPruning,
              masks: dict[str, dict[str, Any]]) -> dict[str, str]:
    info = {"version": FORMAT_VERSION, "model": model, "source": ckpt.path.name, "source_format": ckpt.source,
            "pattern": str(pruning.pattern), "sparsity": pruning.sparsity, "criterion": pruning.criterion,
            "criterion_options": pruning.options,
            "calibration": {"data": options.calibration, "samples": options.samples, "seq_len": options.seq_len,
                            "seed": options.seed, "sequential": True},
            "config": ckpt.shape.to_dict(), "tensors": masks}
    return {"format": "pt", "sparsecc": json.dumps(info, separators=(",", ":"))}


def prune_streamed(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    options: StreamedOptions | None = None,
    *,
    config: str | os.PathLike | None = None,
    force: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> StreamedResult:
    """Prune a Llama-shaped checkpoint block by block into ``out`` (safetensors); see the module docstring.

    ``progress(done, total, text)`` is called after each block with the time per
    block and the time left.
    """
    options = options or StreamedOptions()
    return_freed_memory()
    t_start = time.perf_counter()
    rss_start = rss_mb() or 0.0
    out = Path(out)
    if out.exists() and not force:
        raise UsageError(f"{out} exists; pass --force to replace it")
    if out.suffix != ".safetensors":
        raise UsageError(f"--out {out}: the sparse checkpoint is a .safetensors file")
    path, model = resolve_checkpoint(str(checkpoint))
    ckpt = open_decoder_checkpoint(path, config)
    shape = ckpt.shape
    try:
        pattern = SparsityPattern.parse(options.pattern)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if options.micro_batch < 1 or options.samples < 1 or options.seq_len < 2:
        raise UsageError("samples and micro-batch must be >= 1, seq-len >= 2")
    pruning = BlockPruning(pattern, options.sparsity, options.criterion, options.criterion_options, BLOCK_PREFIX,
                           options.skip)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    tokens = calibration_tokens(ckpt, options)
    rss_setup = rss_mb() or 0.0
    hidden = _embed(ckpt, tokens, options.micro_batch)
    timings["calibration_inputs"] = time.perf_counter() - t0

    names = shape.tensor_names() + sorted(set(ckpt.names()) - set(shape.tensor_names()))
    entries = [(n, ckpt.tensor_dtype(n), tuple(ckpt.tensor_shape(n))) for n in names]
    masks: dict[str, dict[str, Any]] = {}
    block_seconds: list[float] = []
    # Room for the metadata: ~120 bytes per pruned tensor's entry plus the fixed part.
    with SafetensorsWriter(out, entries, metadata_bytes=8192 + 160 * len(BLOCK_TENSORS) * shape.layers) as writer:
        writer_copy(ckpt, writer, "model.embed_tokens.weight")
        blocks = captured_blocks(ckpt, hidden[0], max(shape.max_positions, options.seq_len), timings)
        for i, prefix, weights, program, t_block in blocks:
            try:
                result = pruning.prune(program, hidden)
            except Exception as e:
                if isinstance(e, UsageError):
                    raise type(e)(f"{ckpt.path}, block {i} ({prefix}*): {e}") from e
                raise
            hidden = result.outputs
            for t in BLOCK_TENSORS:
                value = result.new.get(t, weights[t])
                writer.write(prefix + t, value.to(ckpt.tensor_dtype(prefix + t)))
            masks.update({prefix + k: v for k, v in result.masks.items()})
            for k, v in result.seconds.items():
                timings[k] = timings.get(k, 0.0) + v
            del weights, result
            block_seconds.append(time.perf_counter() - t_block)
            if progress:
                mean = sum(block_seconds) / len(block_seconds)
                progress(i + 1, shape.layers, f"block {i} in {block_seconds[-1]:.1f}s, "
                         f"~{mean * (shape.layers - i - 1):.0f}s left")
        del hidden, program, blocks
        for n in names[1 + len(BLOCK_TENSORS) * shape.layers:]:
            writer_copy(ckpt, writer, n)
        writer.finish(_metadata(ckpt, model, options, pruning, masks))
    return StreamedResult(out, shape, block_seconds, masks, rss_start, rss_setup, peak_rss_mb(),
                          memory_budget_mb(shape, options.samples, options.seq_len)["total"],
                          time.perf_counter() - t_start, timings)


def captured_blocks(ckpt: DecoderCheckpoint, example: torch.Tensor, max_positions: int, timings: dict[str, float]
                    ) -> Iterator[tuple[int, str, dict[str, torch.Tensor], Any, float]]:
    """Each decoder block as ``(index, prefix, float32 weights, program, start time)``.

    Block 0 is captured once (on ``example`` hidden states, positions up to
    ``max_positions``; its time goes to ``timings["capture"]``); every later
    block only swaps its weights into that program. The previous block's
    weights are dropped before the next are read, so one block is alive.
    """
    program = None
    for i in range(ckpt.shape.layers):
        start = time.perf_counter()
        prefix = block_prefix(i)
        weights = {t: ckpt.read(prefix + t).float() for t in BLOCK_TENSORS}
        if program is None:
            t0 = time.perf_counter()
            program = capture(DecoderBlock(ckpt.shape, weights), (example,), {},
                              DecoderBlock.dynamic_shapes(max_positions))
            timings["capture"] = time.perf_counter() - t0
        else:
            set_block_weights(program, weights, BLOCK_PREFIX)
        yield i, prefix, weights, program, start
        del weights


def writer_copy(ckpt: DecoderCheckpoint, writer: SafetensorsWriter, name: str) -> None:
    """Copy a tensor the pruning leaves alone, a piece at a time."""
    for chunk in ckpt.chunks(name):
        writer.write_bytes(name, chunk)

"""`sparsecc prune-streamed`: a decoder checkpoint pruned block by block into a sparse checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sparsecc.cli.app import JSON_OPTION, activity, app, emit, out

__all__: list[str] = []


@app.command("prune-streamed", short_help="Prune a checkpoint larger than memory, one block at a time.")
def prune_streamed_cmd(
    checkpoint: str = typer.Argument(..., metavar="CHECKPOINT",
                                     help="A Llama-shaped .safetensors file (Hugging Face names), a .gguf file, "
                                          "or smollm2 (the GGUF file the zoo's SmolLM2 loads)."),
    out_path: Path = typer.Option(..., "--out", "-o", metavar="OUT", help="The sparse checkpoint (a .safetensors file)."),
    config: Optional[Path] = typer.Option(None, "--config", metavar="CONFIG",
                                          help="Hugging Face Llama config.json of a safetensors checkpoint "
                                               "(default: config.json beside it)."),
    pattern: str = typer.Option("2:4", "--pattern", "-p", help="unstructured, N:M (2:4) or RxC blocks."),
    sparsity: float = typer.Option(0.5, "--sparsity", "-s", help="Fraction of zeros (implied by N:M)."),
    criterion: str = typer.Option("sparsegpt", "--criterion", "-c", help="sparsegpt, wanda, magnitude or random."),
    samples: int = typer.Option(64, "--samples", metavar="N", help="Calibration windows."),
    seq_len: int = typer.Option(256, "--seq-len", metavar="N", help="Tokens per calibration window."),
    micro_batch: int = typer.Option(8, "--micro-batch", metavar="N", help="Windows per forward call."),
    calibration: str = typer.Option("lee", "--calibration",
                                    help="lee (calibration half of lee_background, needs a tokenizer) or random "
                                         "(seeded token ids)."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", metavar="DIR",
                                            help="Tokenizer folder for lee calibration of a safetensors checkpoint."),
    damp: float = typer.Option(0.01, "--damp", help="SparseGPT dampening (fraction of the mean Hessian diagonal)."),
    blocksize: int = typer.Option(128, "--blocksize", help="SparseGPT columns per lazy update."),
    seed: int = typer.Option(0, "--seed", help="Seed of random calibration tokens."),
    force: bool = typer.Option(False, "--force", help="Replace OUT (and the --lower-onnx DIR) if it exists."),
    lower_onnx: Optional[Path] = typer.Option(None, "--lower-onnx", metavar="DIR",
                                              help="Then lower OUT block by block to ONNX in DIR: "
                                                   "blocks/block_NNN.onnx, embedding.onnx, head.onnx, "
                                                   "manifest.json, run_blocks.py."),
    lower_executorch: Optional[Path] = typer.Option(None, "--lower-executorch", metavar="DIR",
                                                    help="Refused: ExecuTorch per block is not built (the "
                                                         "message says why)."),
    json_out: Optional[str] = JSON_OPTION,
) -> None:
    """Prune a decoder checkpoint one block at a time, without loading it whole.

    Reads each block's weights from CHECKPOINT when its turn comes, prunes them
    on the calibration hidden states of the already-pruned blocks before it
    (SparseGPT's sequential order, the same solver as `sparsecc sparsify`),
    writes them to OUT and frees them: peak memory is about one block's weights,
    activations and Hessians, whatever the depth. OUT is written under a
    temporary name and renamed when complete; its header metadata ("sparsecc")
    records pattern, sparsity, criterion, calibration, config and per-tensor
    mask fingerprints. Load it with `sparsecc eval OUT.safetensors` or
    `sparsecc compile OUT.safetensors --recipe 2of4` (magnitude at the same
    pattern keeps exactly its zeros).

    With --lower-onnx DIR, OUT is then read back block by block and each
    decoder block is lowered to its own ONNX file (memory: one block), with
    the embedding and the final norm + LM head as small ONNX files, a
    manifest.json and run_blocks.py (chains them with onnxruntime, no torch).

    Example: sparsecc prune-streamed smollm2 --pattern 2:4 --criterion sparsegpt --out smollm2-2of4.safetensors
    """
    from sparsecc.flows.streamed import StreamedOptions, prune_streamed
    from sparsecc.flows.streamed_lowering import REFUSED_TARGETS, TargetRefused

    if lower_executorch is not None:  # before the pruning: refused whatever the checkpoint
        raise TargetRefused(f"--lower-executorch: {REFUSED_TARGETS['executorch']}")
    if lower_onnx is not None and lower_onnx.exists() and not force:
        from sparsecc.errors import UsageError

        raise UsageError(f"--lower-onnx {lower_onnx} exists; pass --force to replace it")

    opts = StreamedOptions(pattern=pattern, sparsity=sparsity, criterion=criterion,
                           criterion_options={"damp": damp, "blocksize": blocksize} if criterion == "sparsegpt" else {},
                           samples=samples, seq_len=seq_len, micro_batch=micro_batch, calibration=calibration,
                           tokenizer=tokenizer, seed=seed)
    with activity(checkpoint) as act:
        act.step(f"pruning block by block ({pattern} {criterion})")

        def progress(done: int, total: int, text: str) -> None:
            act.step(f"{done}/{total} {text}")

        result = prune_streamed(checkpoint, out_path, opts, config=config, force=force, progress=progress)
    n = sum(m["numel"] for m in result.masks.values())
    nz = sum(m["nonzero"] for m in result.masks.values())
    out.print(f"wrote {out_path}: {len(result.masks)} weights pruned to {1 - nz / max(1, n):.1%} zeros in "
              f"{result.seconds:.1f}s; peak RSS {result.peak_rss_mb:.0f} MB, {result.peak_rss_mb - result.rss_setup_mb:.0f}"
              f" MB above the set-up (one block's weights, activations and Hessians: {result.budget_mb:.0f} MB)",
              highlight=False)
    payload = result.to_dict()
    if lower_onnx is not None:
        from sparsecc.flows.streamed_lowering import lower_streamed_onnx

        with activity(str(out_path)) as act:
            act.step(f"lowering block by block to ONNX in {lower_onnx}")

            def lowered(done: int, total: int, text: str) -> None:
                act.step(f"{done}/{total} {text}")

            low = lower_streamed_onnx(out_path, lower_onnx, force=force, progress=lowered)
        checked = sum(len(b["pattern_checks"]) for b in low.manifest["blocks"])
        out.print(f"wrote {lower_onnx}: {len(low.manifest['blocks'])} block files, embedding, head, manifest.json, "
                  f"run_blocks.py in {low.seconds:.1f}s ({checked} weights' pattern re-checked in the ONNX "
                  f"initializers); peak RSS {low.peak_rss_mb:.0f} MB", highlight=False)
        payload["lower_onnx"] = low.to_dict()
    emit(payload)

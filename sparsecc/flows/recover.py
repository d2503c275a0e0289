"""Run a recipe's ``recovery:`` stages on a sparse program: data, teacher, verification, records.

`recover` runs the stages in order (reconstruct, then distill, say): each one
gets the program the stage before returned, the dense program as teacher and
the training batches its options name (`training_batches`). After each stage
every weight's pattern is verified again (`VerifySparsityPass`) and the masked
entries are checked to be exactly zero, so a stage cannot hand on a program
that breaks its sparsity. `RecoveryRun.records` is what the bundle manifest
keeps: method, steps, data, loss before and after, seconds, tokens, options.

Training data (``options.data``):

- ``calibration``: the model's calibration inputs (`sparsecc.data.calibration_inputs`:
  the first half of ``lee_background`` for language models, calibration photos or
  digits for image models), never the evaluation split;
- ``synthetic``: fresh random inputs shaped like the model's example (reference
  models without data get these for ``calibration`` too);
- any other name: ``sparsecc.data.training_inputs(spec, name, samples, seq_len,
  batch_size, seed)`` when the data layer provides it (more English prose).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.export import ExportedProgram

from sparsecc.errors import UsageError
from sparsecc.passes.quantize_weights import QuantizeWeightsPass, quant_info
from sparsecc.plan.quantize_options import QuantizeOptions
from sparsecc.plan.recovery_options import RecoveryOptions
from sparsecc.recovery.base import (
    Batch,
    RecoveryResult,
    assert_zeros_kept,
    batch_unit,
    check_options,
    get_method,
    masks_of,
)

__all__ = ["RecoveryRun", "check_stages", "recover", "training_batches", "join_batches"]

MASK_LEARNING_METHODS = ("learned-mask", "sr-ste")  # they change the masks: only the patterns must hold

Progress = Callable[[str], None]


@dataclass
class RecoveryRun:
    program: ExportedProgram
    results: list[RecoveryResult] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def join_batches(program: ExportedProgram, batches: list[Batch], size: int) -> list[Batch]:
    """Consecutive same-shape batches joined along axis 0, ``size`` at a time, when the program
    accepts the joined shape (a program captured with a static batch gets them as they are)."""
    if size <= 1 or len(batches) <= 1:
        return batches
    out: list[Batch] = []
    for s in range(0, len(batches), size):
        group = batches[s:s + size]
        leaves = [torch.utils._pytree.tree_flatten(b) for b in group]
        if any(spec != leaves[0][1] or [getattr(t, "shape", None) for t in flat]
               != [getattr(t, "shape", None) for t in leaves[0][0]] for flat, spec in leaves):
            out.extend(group)
            continue
        joined = [torch.cat(ts, 0) if isinstance(ts[0], torch.Tensor) and ts[0].dim() else ts[0]
                  for ts in zip(*(flat for flat, _ in leaves))]
        out.append(torch.utils._pytree.tree_unflatten(joined, leaves[0][1]))
    try:
        with torch.no_grad():
            program.module()(*out[0][0], **out[0][1])
    except Exception:  # a static batch axis: keep one sample per call
        return batches
    return [(tuple(a), dict(k)) for a, k in out]


def _has_data(spec: Any) -> bool:
    """Whether `calibration_inputs` draws real data for ``spec`` (see its protocol), not random inputs."""
    from sparsecc.data.calibration import is_digit_model

    task, extras = getattr(spec, "task", ""), getattr(spec, "extras", {}) or {}
    return ((task in ("causal-lm", "feature-extraction") and "tokenizer" in extras)
            or (task == "image-classification" and ("image_size" in extras or is_digit_model(spec))))


def training_batches(spec: Any, options: RecoveryOptions, program: ExportedProgram | None = None,
                     ) -> tuple[list[Batch], str]:
    """The batches ``options.data`` names for zoo model ``spec``, and a label saying what they are."""
    from sparsecc.data.calibration import calibration_inputs, reference_inputs

    if spec is None:
        raise UsageError("recovery needs training data: pass batches=..., or a zoo model whose loader provides it")
    task = getattr(spec, "task", "")
    bs = options.batch_size
    lm = task == "causal-lm"
    n = options.samples if lm else max(1, options.samples // bs)
    if options.data == "synthetic":
        return reference_inputs(spec, n, options.seq_len, bs, options.seed), "synthetic"
    if options.data == "calibration":
        # a model without data (no tokenizer, say) trains on synthetic inputs: calibration_inputs makes
        # random ones for it, or fails and reference_inputs does
        label = "calibration" if _has_data(spec) else "synthetic"
        try:
            batches = calibration_inputs(spec, n, options.seq_len, batch_size=bs, seed=options.seed)
        except ValueError as e:
            if label == "calibration":  # more than its calibration split holds: say so, never train on noise
                raise UsageError(f"recovery data 'calibration' for {getattr(spec, 'name', '?')}: {e}") from None
            batches = reference_inputs(spec, n, options.seq_len, bs, options.seed)
    else:
        provider = getattr(importlib.import_module("sparsecc.data"), "training_inputs", None)
        if provider is None:
            raise UsageError(f"recovery data {options.data!r} is not known; use calibration or synthetic")
        batches = provider(spec, options.data, options.samples, options.seq_len, bs, options.seed)
        label = options.data
    if lm and program is not None:
        batches = join_batches(program, batches, bs)
    return batches, label


def _weights_digest(program: ExportedProgram) -> str:
    """sha256 of every state tensor's name, dtype, shape and bytes: which program a stage started from."""
    h = hashlib.sha256()
    for name, t in sorted(program.state_dict.items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _stage_folder(root: str, spec: Any, index: int, method: str) -> Path:
    """``root/MODEL/INDEX-METHOD``: one folder per model and stage, so recipes that share a checkpoint
    folder (the shipped ones all name ``recovery-checkpoints``) keep apart."""
    name = getattr(spec, "name", None)
    return Path(root, *([name] if name else []), f"{index}-{method}")


def _claim_checkpoints(folder: Path, program: ExportedProgram) -> None:
    """A stage's checkpoint folder belongs to the program it started from: resuming there from another
    program (another model, another one-shot result) would load weights that are not its own."""
    digest = _weights_digest(program)
    mark = folder / "start-program.sha256"
    if mark.exists() and mark.read_text().strip() != digest:
        raise UsageError(f"checkpoint folder {folder} holds a run that started from another program (another "
                         f"model, recipe or one-shot result); delete it or choose another checkpoint folder")
    folder.mkdir(parents=True, exist_ok=True)
    mark.write_text(digest + "\n")


def _verify(program: ExportedProgram, masks: dict[str, torch.Tensor], method: str) -> ExportedProgram:
    from sparsecc.verify.verify_sparsity import VerifySparsityPass

    assert_zeros_kept(program, masks)
    return VerifySparsityPass()(program).program


def check_stages(stages: Sequence[RecoveryOptions]) -> None:
    """Refuse a stage whose method is unknown or whose ``options:`` hold a key the method does not read,
    before anything runs (a misspelt key in the last stage would otherwise surface after the first ones)."""
    for i, opts in enumerate(stages):
        check_options(opts, f"recovery[{i}] ({opts.method})")


def recover(program: ExportedProgram, teacher: ExportedProgram | torch.nn.Module,
            stages: Sequence[RecoveryOptions], *, spec: Any = None, batches: Sequence[Batch] | None = None,
            progress: Progress | None = None) -> RecoveryRun:
    """Run ``stages`` in order on the sparse ``program`` (see the module docstring)."""
    say = progress or (lambda msg: None)
    check_stages(stages)
    run = RecoveryRun(program)
    t_all = time.perf_counter()
    task = getattr(spec, "task", "") if spec is not None else ""
    for i, opts in enumerate(stages):
        extra = dict(opts.extra)
        if task and "task" not in extra:
            extra["task"] = task
        ck = str(_stage_folder(opts.checkpoint_dir, spec, i, opts.method)) if opts.checkpoint_dir else None
        if ck is not None:
            _claim_checkpoints(Path(ck), run.program)
        opts = dataclasses.replace(opts, extra=extra, checkpoint_dir=ck)
        fn = get_method(opts.method)
        if batches is not None:
            data, label = list(batches), "given"
        else:
            say(f"recovery {i + 1}/{len(stages)}: {opts.method} data ({opts.data})")
            data, label = training_batches(spec, opts, run.program)
        masks = masks_of(run.program)
        say(f"recovery {i + 1}/{len(stages)}: {opts.method} on {len(data)} batches")
        result = fn(run.program, teacher, data, opts, say)
        run.program = _verify_learned(result.program, opts.method) if opts.method in MASK_LEARNING_METHODS \
            else _verify(result.program, masks, opts.method)
        run.results.append(result)
        run.records.append({
            **result.summary(), "data": label, "batches": len(data),
            "options": {k: v for k, v in opts.to_dict().items() if k not in ("method", "checkpoint_dir")},
        })
        say(f"recovery {opts.method}: loss {result.loss_before:.4g} -> {result.loss_after:.4g} "
            f"in {result.seconds:.1f}s ({result.tokens} {'tokens' if batch_unit(data[0]) == 'tok' else 'samples'})")
    run.program = _back_on_int8_grid(run.program, say)
    run.seconds = time.perf_counter() - t_all
    return run


def _back_on_int8_grid(program: ExportedProgram, say: Progress) -> ExportedProgram:
    """Quantize again the int8 weights (a recipe's ``quantize:``) that training moved off their grid.

    Training updates the fake-quantized weights in float; without this the
    program would say int8 while holding float weights. New per-channel scales
    come from the trained weights (post-training, not quantization-aware
    training); zeros stay zeros and the pass re-checks every pattern.
    """
    records = {f: r for f in program.state_dict if (r := quant_info(program, f)) is not None}
    if not records:
        return program
    modes = {r.get("activations", "dynamic") for r in records.values()}
    if len(modes) > 1:
        raise UsageError(f"int8 weights with mixed activation modes {sorted(modes)} cannot be re-quantized")
    absmax = {f: r["act_scale"] * 127 for f, r in records.items() if r.get("act_scale")}
    say(f"recovery: {len(records)} int8 weights quantized again on their trained values")
    return QuantizeWeightsPass(QuantizeOptions(activations=modes.pop()), fqns=set(records),
                               act_absmax=absmax)(program).program


def _verify_learned(program: ExportedProgram, method: str) -> ExportedProgram:
    """Learned-mask methods change the masks: only the patterns (not the old zeros) must hold."""
    from sparsecc.verify.verify_sparsity import VerifySparsityPass

    assert_zeros_kept(program, masks_of(program))
    return VerifySparsityPass()(program).program

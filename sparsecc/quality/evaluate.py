"""Quality of a (sparse) model on real data, against its dense reference.

`evaluate` runs one task on a PyTorch model or `ExportedProgram` (dense or
sparse, as `sparsecc.capture` / `sparsecc.sparsify` return it);
`evaluate_bundle` runs it on a bundle written by `sparsecc compile`: its
ONNX model (ONNX Runtime), its ExecuTorch ``.pte`` and its ``program.pt2``,
each sparse build against the dense build of the same backend in ``dense/``.
The data is `sparsecc.data`; nothing here overlaps the calibration data.

Tasks (fixed protocols):

- ``perplexity`` (causal LMs, SmolLM2-135M): the evaluation half of
  ``lee_background`` (second half of its token stream), windows of 256 tokens,
  stride 256 (no overlap), every full window. Each window predicts its tokens
  2..W from the ones before; with a stride below the window, a window scores
  only the tokens the previous one did not. Perplexity = exp(total NLL /
  tokens scored); the token count is reported.
- ``lee-similarity`` (sentence encoders, MiniLM): embeddings of the 50
  ``lee.cor`` documents (mean of the last hidden state over the attention
  mask, truncation at 256 tokens); cosine similarity of each of the 1,225
  document pairs against the human ratings of ``similarities0-1.txt``:
  Pearson and Spearman correlation; and the mean cosine between each
  document's embedding and the dense model's.
- ``photo-agreement`` (ImageNet classifiers, EfficientNet-Lite0): the
  scikit-image photos `sparsecc.data.EVALUATION_PHOTOS`, each in 8 views
  (resize the short side to 256 and take the centre and the four corner
  224-crops, the centre crop flipped, and the centre 224-crop after resizing
  the short side to 320, flipped and not), normalized as the spec says.
  Top-1 agreement (same argmax as the dense model), top-5 agreement (the dense
  model's top-1 class is in the model's top 5) and the mean KL divergence
  KL(p_dense || p_model) of the softmax outputs, in nats. ``top1_agreement_sure``
  is top-1 agreement on the views where the dense model gives its top class
  more than half the probability: on the others (about two thirds of these
  views for EfficientNet-Lite0) near-tied classes swap order under small changes.
- ``fashion-probe`` (the same classifiers): a linear probe on frozen features
  (the input of the last linear layer, the classifier): Fashion-MNIST images
  upsampled to the model's size (bilinear), grey replicated to RGB; a seeded
  subset of 2,000 training and 1,000 test images; ridge regression to one-hot
  labels on standardized features, lambda = 0.1 x 2,000, closed form. Reports
  test accuracy. Not available on ExecuTorch (the ``.pte`` returns only logits).
- ``digit-accuracy`` (MNIST net): accuracy on the 9,000 evaluation digits of
  `sparsecc.data.mnist_digits` and top-1 agreement with the dense model.

Inputs are fed within the bundle's dynamic dims (batch and sequence ranges
from its manifest): batches are split to the largest allowed size and padded
up to the smallest (padding rows are dropped from the outputs); an input that
cannot fit (a sequence longer than the range) is an `EvalError` naming it.

One module per task (`perplexity`, `lee_similarity`, `photo_agreement`,
`fashion_probe`, `digits`), the metrics in `sparsecc.quality.metrics`, what
runs a model or a bundle's build in `sparsecc.quality.forwards`; this module
holds the task table and the entry points.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from sparsecc.data.calibration import is_digit_model
from sparsecc.quality.digits import collect_digits as _collect_digits
from sparsecc.quality.digits import score_digits as _score_digits
from sparsecc.quality.fashion_probe import collect_probe as _collect_probe
from sparsecc.quality.fashion_probe import score_probe as _score_probe
from sparsecc.quality.forwards import Forward as _Forward  # noqa: F401 - the name tests build forwards with
from sparsecc.quality.forwards import bundle_forward as _bundle_forward
from sparsecc.quality.forwards import torch_forward as _torch_forward
from sparsecc.quality.lee_similarity import collect_lee as _collect_lee
from sparsecc.quality.lee_similarity import score_lee as _score_lee
from sparsecc.quality.metrics import mean_kl, pearson, perplexity_from_nll, ridge_probe_accuracy, spearman, top_k_agreement
from sparsecc.quality.perplexity import collect_perplexity as _collect_perplexity
from sparsecc.quality.perplexity import score_perplexity as _score_perplexity
from sparsecc.quality.photo_agreement import collect_photos as _collect_photos
from sparsecc.quality.photo_agreement import score_photos as _score_photos
from sparsecc.quality.task import EvalError, EvalOptions, Progress, Task

__all__ = [
    "EvalError",
    "EvalOptions",
    "EvalResult",
    "TASKS",
    "Task",
    "default_tasks",
    "evaluate",
    "evaluate_bundle",
    "require_evaluated",
    "reference_outputs",
    "results_table",
    "perplexity_from_nll",
    "pearson",
    "spearman",
    "top_k_agreement",
    "mean_kl",
    "ridge_probe_accuracy",
]


@dataclass
class EvalResult:
    """One task on one model (or one backend's build of it)."""

    task: str
    model: str
    runner: str  # "torch", "onnx", "executorch"
    variant: str  # "sparse", "dense", or "model" for a program given directly
    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    reference: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def primary(self) -> float:
        return self.metrics[TASKS[self.task].primary]


TASKS: dict[str, Task] = {
    t.name: t for t in (
        Task("perplexity", "causal LM perplexity on the evaluation half of lee_background", "perplexity", False,
             _collect_perplexity, _score_perplexity, needs_reference=False),
        Task("lee-similarity", "embedding cosine vs human similarity on the 50 Lee documents", "spearman", True,
             _collect_lee, _score_lee),
        Task("photo-agreement", "top-1/top-5 agreement and KL to the dense model on bundled photos", "top1_agreement",
             True, _collect_photos, _score_photos),
        Task("fashion-probe", "Fashion-MNIST linear probe on the features before the classifier", "probe_accuracy",
             True, _collect_probe, _score_probe),
        Task("digit-accuracy", "accuracy on the MNIST digits", "accuracy", True, _collect_digits, _score_digits),
    )
}


def default_tasks(spec) -> list[str]:
    """The tasks that fit ``spec`` (by its task and inputs)."""
    task = getattr(spec, "task", "")
    if task == "causal-lm" and "tokenizer" in (spec.extras or {}):
        return ["perplexity"]
    if task == "feature-extraction" and "tokenizer" in (spec.extras or {}):
        return ["lee-similarity"]
    if task == "image-classification" and "image_size" in (spec.extras or {}):
        return ["photo-agreement", "fashion-probe"]
    if task == "image-classification" and is_digit_model(spec):
        return ["digit-accuracy"]
    return []


def _task(name: str, spec) -> Task:
    if name not in TASKS:
        raise EvalError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    fits = default_tasks(spec)
    if name not in fits:
        raise EvalError(f"task {name!r} does not fit model {spec.name!r} (task {spec.task or 'unset'!r}); "
                        f"tasks for it: {', '.join(fits) or 'none (evaluation needs a real pretrained model)'}")
    return TASKS[name]


def _spec(model: Any):
    from sparsecc.models import ModelSpec
    from sparsecc.models.resolve import resolve_model

    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, str):
        return resolve_model(model)
    raise EvalError(f"model must be a zoo name, path/to/file.py:factory or a ModelSpec, got {type(model).__name__}")


# -- entry points ---------------------------------------------------------------------------------


def evaluate(target: Any, task: str, *, model: Any, reference: Any = "auto", options: EvalOptions | None = None,
             progress: Progress | None = None, reference_raw: Any = None) -> EvalResult:
    """Run ``task`` on ``target`` (an ``nn.Module`` or ``ExportedProgram``).

    ``model`` (zoo name, file reference or `ModelSpec`) supplies the data
    handling (tokenizer, normalization) and, with ``reference="auto"``, the
    dense reference: ``spec.model`` (for tasks whose metrics need it; perplexity
    computes the dense figure only when ``reference`` is given explicitly). Pass
    ``reference=None`` to skip the comparison, or another module/program. ``reference_raw`` reuses the
    reference's outputs from an earlier call (see `reference_outputs`).
    """
    spec = _spec(model)
    t = _task(task, spec)
    opts = options or EvalOptions()
    t0 = time.perf_counter()
    raw = t.collect(_torch_forward(target), spec, opts, progress)
    ref = reference_raw
    if isinstance(reference, str) and reference == "auto" and not t.needs_reference:
        reference = None  # e.g. perplexity: the dense figure is a second full pass; ask for it explicitly
    if ref is None and reference is not None:
        ref_model = spec.model if (isinstance(reference, str) and reference == "auto") else reference
        ref = t.collect(_torch_forward(ref_model, "dense"), spec, opts, _prefixed(progress, "dense: "))
    metrics, details = t.score(raw, ref, opts)
    return EvalResult(task, spec.name, "torch", "model", metrics, details,
                      reference="" if ref is None else f"{spec.name} dense PyTorch model",
                      seconds=time.perf_counter() - t0)


def reference_outputs(task: str, model: Any, reference: Any = None, options: EvalOptions | None = None,
                      progress: Progress | None = None) -> Any:
    """The dense reference's raw outputs for ``task``, to pass as ``reference_raw`` to several `evaluate` calls."""
    spec = _spec(model)
    return _task(task, spec).collect(_torch_forward(reference if reference is not None else spec.model, "dense"),
                                     spec, options or EvalOptions(), progress)


def _prefixed(progress: Progress | None, prefix: str) -> Progress | None:
    if progress is None:
        return None
    return lambda desc, done, total: progress(prefix + desc, done, total)


def evaluate_bundle(path: str | os.PathLike, task: str, *, backends: Sequence[str] | None = None,
                    model: Any = None, options: EvalOptions | None = None,
                    progress: Progress | None = None) -> list[EvalResult]:
    """Run ``task`` on each backend's sparse and dense builds in a bundle folder.

    ``model`` defaults to the manifest's model name (its tokenizer and
    normalization are needed). Sparse builds are compared with the dense
    build of the same backend; without ``dense/``, with the original model.
    """
    from sparsecc.bundle.reader import Bundle
    from sparsecc.errors import BenchError

    try:
        bundle = Bundle(path)
    except BenchError as e:
        raise EvalError(str(e)) from e
    bundle.check_files()  # a bundle changed since compile is refused before it is run
    spec = _spec(model if model is not None else bundle.model_ref)
    t = _task(task, spec)
    opts = options or EvalOptions()
    have = bundle.backends()
    chosen = list(backends) if backends else have
    missing = [b for b in chosen if b not in have]
    if missing:
        raise EvalError(f"{bundle.path} has no {', '.join(missing)} build; it has: {', '.join(have)}")
    results = []
    fallback_ref = None
    for backend in chosen:
        raws = {}
        for variant in ("dense", "sparse"):
            fwd = _bundle_forward(bundle, backend, variant)
            if fwd is None:
                continue
            t0 = time.perf_counter()
            try:
                raws[variant] = (t.collect(fwd, spec, opts, _prefixed(progress, f"{backend} {variant}: ")),
                                 time.perf_counter() - t0, fwd.notes)
            except EvalError as e:
                results.append(EvalResult(task, spec.name, backend, variant, {}, {"unavailable": str(e)}))
        if "dense" in raws:
            ref, ref_label = raws["dense"][0], f"dense {backend} build in the bundle"
        else:
            if fallback_ref is None:
                fallback_ref = t.collect(_torch_forward(spec.model, "dense"), spec, opts, _prefixed(progress, "dense: "))
            ref, ref_label = fallback_ref, f"{spec.name} dense PyTorch model"
        for variant, (raw, secs, notes) in raws.items():
            use_ref = None if (variant == "dense" and not t.needs_reference) else ref
            try:
                metrics, details = t.score(raw, use_ref, opts)
            except EvalError as e:
                results.append(EvalResult(task, spec.name, backend, variant, {}, {"unavailable": str(e)}))
                continue
            if notes:
                details["notes"] = list(notes)
            results.append(EvalResult(task, spec.name, backend, variant, metrics, details, ref_label, secs))
    return require_evaluated(results, str(bundle.path))


def require_evaluated(results: Sequence[EvalResult], what: str) -> list[EvalResult]:
    """``results``, or `EvalError` when not one metric was computed (an evaluation of nothing is no pass)."""
    if not any(r.metrics for r in results):
        why = "; ".join(f"{r.runner} {r.variant}: {r.details['unavailable']}"
                        for r in results if r.details.get("unavailable"))[:500]
        raise EvalError(f"{what}: nothing was evaluated" + (f" ({why})" if why else
                        ": no task fits this model (evaluation needs a pretrained model with a task)"))
    return list(results)


def results_table(results: Sequence[EvalResult], title: str = "") -> Any:
    """A rich table: one row per (runner, variant), one column per metric."""
    from rich.table import Table

    metrics: list[str] = []
    for r in results:
        metrics += [m for m in r.metrics if m not in metrics]
    table = Table(title=title or None)
    for col in ("task", "model", "runner", "variant", *metrics, "seconds"):
        table.add_column(col, justify="right" if col in metrics or col == "seconds" else "left")
    for r in results:
        cells = [f"{r.metrics[m]:.4f}" if m in r.metrics else "" for m in metrics]
        if not r.metrics and r.details.get("unavailable"):
            cells = ["n/a"] * len(metrics)
        table.add_row(r.task, r.model, r.runner, r.variant, *cells, f"{r.seconds:.1f}")
    return table

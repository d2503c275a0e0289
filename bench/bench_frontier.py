"""Quality against latency for one model: dense fp32, dense int8 and sparse variants in one run.

Every variant is a deployable build, and both its latency and its quality are
measured through that build (never through a stand-in):

- ``dense onnx fp32``: the dense program exported to ONNX, in ONNX Runtime;
- ``dense onnx int8``: ONNX Runtime's ``quantize_dynamic`` of it (int8
  per-channel weights, dynamic int8 activations): the first thing a CPU user tries;
- ``dense torch``: the dense program in PyTorch (``--torch-dense``);
- one per ``--program NAME=PATH.pt2``: a sparse program (one-shot, or recovered:
  ``bench/bench_recovery.py --cache-dir DIR`` writes ``<method>-<config>.pt2``),
  lowered to ``torch-sparse`` (sparsecc's CPU kernels, chosen per layer by
  measurement at ``--seq`` tokens against the fastest dense product);
- ``NAME int8`` (``--int8``): the same program with int8 per-channel weights
  (zeros kept; `sparsecc.passes.QuantizeWeightsPass`), lowered to ``torch-sparse``
  with sparsecc's int8 kernels (dynamic int8 activations);
- ``NAME onnx fp32`` / ``NAME onnx int8`` (``--onnx``): the program exported to
  ONNX, and ONNX Runtime's ``quantize_dynamic`` of that export, as for the dense
  model: the path of a structured (smaller dense) program, whose speed comes
  from its smaller layers in any runtime.

A structured program (``bench_recovery.py --configs minilm-ffn50``) has other
weight shapes than the model: it is used as captured (its dynamic dims cover
the timed shape) instead of being captured again with the model's code.

Latency: batch 1, ``--seq`` tokens, ``--threads`` threads, every variant
interleaved in one process (`sparsecc.core.timing.time_interleaved`, rounds
A B .. B A), medians; the speed-up is against the fastest dense variant.
Quality: the model's task on its evaluation data, with the dense fp32
PyTorch model as the reference (lee-similarity for MiniLM: mean cosine of the
Lee documents' embeddings to the dense ones, and Pearson against the human
ratings). Writes ``<out>.json``, ``<out>.md`` and ``<out>.png`` (quality against
speed-up; the fastest dense variant is the line to beat).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_frontier.py --model minilm \\
        --program oneshot=/tmp/rec/oneshot-minilm-8x8-80.pt2 \\
        --program distilled=/tmp/rec/distill-minilm-8x8-80.pt2 --int8 --out bench/results/frontier-minilm

Data: the sparse programs were calibrated and trained on data disjoint from
the evaluation data (see bench_recovery.py); this script only evaluates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TASKS = {"feature-extraction": ("lee-similarity", "cosine_to_dense"),
         "causal-lm": ("perplexity", "perplexity"),
         "image-classification": ("photo-agreement", "top1_agreement_sure")}


def log(msg: str) -> None:
    print(f"[frontier {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def as_callable(runner: Any, names: list[str]) -> Callable[..., list[torch.Tensor]]:
    """A backend runner (flat tensors in artifact order) called like the model: ``f(*args, **kwargs)``."""

    def call(*args: Any, **kwargs: Any) -> list[torch.Tensor]:
        flat = list(args) + [kwargs[n] for n in names[len(args):] if n in kwargs]
        return [torch.as_tensor(o) for o in runner(flat)]

    return call


def with_weights(model: torch.nn.Module, program: Any) -> torch.nn.Module:
    """A copy of ``model`` holding ``program``'s weights (same FQNs), to capture again at another example shape."""
    import copy

    model = copy.deepcopy(model)
    state = {**program.state_dict, **{k: v for k, v in program.constants.items() if isinstance(v, torch.Tensor)}}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if len(missing) == len(own):
        raise SystemExit(f"the program's weights do not match {type(model).__name__}'s names")
    model.load_state_dict({k: state.get(k, v) for k, v in own.items()})
    return model


def lower(backend_name: str, program: Any, folder: Path, axis_names: dict, threads: int,
          example: tuple[tuple, dict]) -> tuple[Any, Any]:
    """(artifact, loaded runner) of ``program`` on one backend, timed kernels chosen with ``threads``."""
    from sparsecc.backends import LowerOptions, get_backend

    backend = get_backend(backend_name)
    extra = {"dynamic_axes": axis_names, "example_inputs": list(example[0]) + list(example[1].values())}
    artifact = backend.lower(program, folder, LowerOptions(threads=threads, extra=extra))
    return artifact, backend.load(artifact, threads)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm")
    p.add_argument("--program", action="append", default=[], metavar="NAME=PATH.pt2",
                   help="a sparse program to lower to torch-sparse (repeat)")
    p.add_argument("--int8", action="store_true", help="also each program with int8 weights and int8 kernels")
    p.add_argument("--onnx", action="store_true",
                   help="also each program in ONNX Runtime, fp32 and quantize_dynamic int8 (structured programs)")
    p.add_argument("--torch-dense", action="store_true", help="also time the dense program in PyTorch")
    p.add_argument("--seq", type=int, default=128, help="tokens per timed call (batch 1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "frontier"))
    args = p.parse_args(argv)

    from sparsecc.backends import Artifact, get_backend
    from sparsecc.benchmarking.int8_reference import quantize_dense_onnx
    from sparsecc.core.capture import capture, dynamic_axis_names
    from sparsecc.core.machine import machine_info
    from sparsecc.core.program import load_program
    from sparsecc.core.timing import time_interleaved
    from sparsecc.models import get_model
    from sparsecc.passes.quantize_weights import QuantizeWeightsPass
    from sparsecc.quality.evaluate import EvalOptions, evaluate, reference_outputs

    torch.set_num_threads(args.threads)
    spec = get_model(args.model)
    task, metric = TASKS[spec.task]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {**machine_info(), "python": platform.python_version(), "torch": torch.__version__,
               "threads": args.threads, "load_avg": os.getloadavg()}
    log(f"machine {json.dumps(machine)}")
    # Captured with two sequences of seq/2 tokens: the torch-sparse kernels are chosen by timing each
    # layer at the example's token count, which is then the timed one (torch.export cannot keep a
    # batch dim dynamic from an example of 1).
    cap_args, cap_kwargs = spec.make_inputs(2, args.seq // 2)
    dense = capture(spec.model, cap_args, cap_kwargs, spec.dynamic_shapes)
    axis_names = dynamic_axis_names(dense, spec.model, cap_args, cap_kwargs, spec.dynamic_shapes)
    timed_args, timed_kwargs = spec.make_inputs(1, args.seq)
    example = (tuple(timed_args), dict(timed_kwargs))

    variants: dict[str, dict[str, Any]] = {}  # name -> {"call", "kind", "note"}
    tmp = Path(tempfile.mkdtemp(prefix="sparsecc-frontier-"))
    art, run = lower("onnx", dense, tmp / "dense-onnx", axis_names, args.threads, example)
    names = [t.name for t in art.inputs]
    variants["dense onnx fp32"] = {"call": as_callable(run, names), "dense": True,
                                   "note": "ONNX Runtime, the dense program"}
    int8_art = Artifact(art.backend, tmp / "dense-onnx-int8", {"model": "model.onnx"}, art.inputs, art.outputs,
                        dict(art.meta))
    int8_art.root.mkdir()
    quantize_dense_onnx(art.path(), int8_art.path())
    variants["dense onnx int8"] = {"call": as_callable(get_backend("onnx").load(int8_art, args.threads), names),
                                   "dense": True, "note": "ONNX Runtime quantize_dynamic (int8 per-channel weights)"}
    if args.torch_dense:
        module = dense.module()
        variants["dense torch"] = {"call": module, "dense": True, "note": "PyTorch, the dense program"}
    for item in args.program:
        name, _, path = item.partition("=")
        loaded = load_program(path)
        try:
            program = capture(with_weights(spec.model, loaded), cap_args, cap_kwargs, spec.dynamic_shapes)
        except RuntimeError as e:  # other weight shapes: a structured program, used as captured
            log(f"{name}: {str(e).splitlines()[0][:120]}: using the program as captured")
            program = loaded
        if args.onnx:
            art, run = lower("onnx", program, tmp / f"{name}-onnx", axis_names, args.threads, example)
            variants[f"{name} onnx fp32"] = {"call": as_callable(run, [t.name for t in art.inputs]), "dense": False,
                                             "note": f"ONNX Runtime, {path}"}
            q_art = Artifact(art.backend, tmp / f"{name}-onnx-int8", {"model": "model.onnx"}, art.inputs,
                             art.outputs, dict(art.meta))
            q_art.root.mkdir()
            quantize_dense_onnx(art.path(), q_art.path())
            variants[f"{name} onnx int8"] = {"call": as_callable(get_backend("onnx").load(q_art, args.threads),
                                                                 [t.name for t in art.inputs]), "dense": False,
                                             "note": f"ONNX Runtime quantize_dynamic, {path}"}
        todo = [(name, program)]
        if args.int8:
            todo.append((f"{name} int8", QuantizeWeightsPass()(program).program))
        for vname, prog in todo:
            log(f"{vname}: lower to torch-sparse (kernels timed per layer)")
            art, run = lower("torch-sparse", prog, tmp / vname.replace(" ", "-"), axis_names, args.threads,
                             example)
            chosen = art.meta.get("kernels") or {}
            variants[vname] = {"call": as_callable(run, [t.name for t in art.inputs]), "dense": False,
                               "note": f"torch-sparse from {path}", "kernels": chosen}

    log(f"timing {len(variants)} variants interleaved, {args.rounds} rounds, batch 1 x {args.seq} tokens")
    fns = {k: (lambda f=v["call"]: f(*example[0], **example[1])) for k, v in variants.items()}
    with torch.inference_mode():
        timing = time_interleaved(fns, warmup=args.warmup, rounds=args.rounds)
    med = {k: v * 1e3 for k, v in timing.medians().items()}
    fastest_dense = min((k for k, v in variants.items() if v["dense"]), key=lambda k: med[k])
    ref_raw = reference_outputs(task, spec, options=EvalOptions())
    rows = []
    for name, v in variants.items():
        log(f"{name}: {task}")
        res = evaluate(v["call"], task, model=spec, reference=None, reference_raw=ref_raw, options=EvalOptions())
        rows.append({"variant": name, "ms": med[name], "speedup_vs_fastest_dense": med[fastest_dense] / med[name],
                     "samples_ms": [s * 1e3 for s in timing.samples_s[name]],
                     "metrics": {k: float(x) for k, x in res.metrics.items()}, "note": v["note"]})
        log(f"{name}: {med[name]:.2f} ms, {rows[-1]['metrics']}")
    record = {"model": args.model, "task": task, "metric": metric, "fastest_dense": fastest_dense,
              "machine": machine, "settings": vars(args), "command": " ".join(sys.argv), "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str))
    out.with_suffix(".md").write_text(markdown(record))
    plot(record, out.with_suffix(".png"))
    print(markdown(record))


def markdown(record: dict[str, Any]) -> str:
    m = record["machine"]
    lines = [f"{record['model']}, batch 1 x {record['settings']['seq']} tokens, {record['settings']['threads']} "
             f"thread(s), {record['settings']['rounds']} interleaved rounds (medians); {m.get('cpu')} "
             f"({', '.join(m.get('cpu_flags', []))}), torch {m.get('torch')}, load {m['load_avg'][0]:.2f}.",
             f"Quality: {record['task']} against the dense fp32 PyTorch model.", "",
             f"| variant | ms | vs fastest dense ({record['fastest_dense']}) | {record['metric']} | other |",
             "|---|---:|---:|---:|---|"]
    for r in record["rows"]:
        others = ", ".join(f"{k} {v:.3f}" for k, v in r["metrics"].items() if k != record["metric"])
        lines.append(f"| {r['variant']} | {r['ms']:.2f} | {r['speedup_vs_fastest_dense']:.2f}x | "
                     f"{r['metrics'].get(record['metric'], float('nan')):.3f} | {others} |")
    return "\n".join(lines) + "\n"


def plot(record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    points = []
    for r in record["rows"]:
        y = r["metrics"].get(record["metric"], float("nan"))
        dense = r["variant"].startswith("dense")
        ax.scatter(r["speedup_vs_fastest_dense"], y, marker="s" if dense else "o", s=40)
        points.append((r["variant"], r["speedup_vs_fastest_dense"], y))
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"speed-up against the fastest dense build ({record['fastest_dense']})")
    ax.set_ylabel(record["metric"])
    ax.set_title(f"{record['model']}: quality against latency (batch 1, {record['settings']['seq']} tokens)")
    ax.margins(x=0.1, y=0.1)  # room for labels at the edges
    fig.tight_layout()
    _place_labels(fig, ax, points)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# Label offsets (points) tried in turn; the first whose box overlaps no placed label is taken.
_LABEL_SPOTS = [(4, 3, "left"), (4, -10, "left"), (-4, 3, "right"), (-4, -10, "right"), (4, 12, "left"),
                (-4, 12, "right"), (4, -19, "left"), (-4, -19, "right"), (4, 21, "left"), (-4, -28, "right")]


def _place_labels(fig: Any, ax: Any, points: list[tuple[str, float, float]]) -> None:
    """Label every point where its text overlaps no label placed before it (points close together
    otherwise print their names on top of each other); the last spot is kept when none is free."""
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed = []
    for name, x, y in sorted(points, key=lambda p: (p[1], -p[2])):
        for k, (dx, dy, ha) in enumerate(_LABEL_SPOTS):
            lead = None if k == 0 else {"arrowstyle": "-", "lw": 0.4, "color": "grey"}
            text = ax.annotate(name, (x, y), fontsize=7, xytext=(dx, dy), textcoords="offset points", ha=ha,
                               arrowprops=lead)
            box = text.get_window_extent(renderer).expanded(1.02, 1.1)
            inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
            if (inside and not any(box.overlaps(b) for b in placed)) or k == len(_LABEL_SPOTS) - 1:
                break
            text.remove()
        placed.append(box)


if __name__ == "__main__":
    main()

"""The ``sparsecc`` command line."""

from __future__ import annotations

import json
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["app", "main"]

app = typer.Typer(
    help=(
        "sparsecc: a sparsity compiler for PyTorch models.\n\n"
        "MODEL is a zoo name (see `sparsecc models`) or path/to/file.py:factory, where "
        "factory() returns a sparsecc.models.ModelSpec or (model, example_args[, example_kwargs"
        "[, dynamic_shapes]])."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output gets a wide table rather than rich's default of 80 columns.
console = Console(stderr=True)
out = Console() if sys.stdout.isatty() else Console(width=150)
# torch.export.save triggers a pytree deprecation warning that users cannot act on.
warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)


def _fail(e: BaseException) -> "typer.Exit":
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
    return typer.Exit(code=1)


def _capture(ref: str):
    from sparsecc.core.capture import capture
    from sparsecc.models.resolve import resolve_model

    with console.status(f"loading {ref}"):
        spec = resolve_model(ref)
    t0 = time.perf_counter()
    with console.status(f"capturing {spec.name} with torch.export"):
        program = capture(spec.model, spec.example_args, spec.example_kwargs, spec.dynamic_shapes)
    console.print(f"captured {spec.name} in {time.perf_counter() - t0:.1f}s")
    return spec, program


@contextmanager
def _mask_progress() -> Iterator:
    with Progress(
        TextColumn("computing masks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.description}"), console=console, transient=True,
    ) as bar:
        task = bar.add_task("", total=None)

        def update(i: int, n: int, fqn: str) -> None:
            bar.update(task, total=n, completed=i, description=fqn)

        yield update


@app.command("models")
def models_cmd() -> None:
    """List the zoo's models."""
    from sparsecc.models import PRETRAINED_MODELS, REFERENCE_MODELS

    out.print("reference (random init): " + ", ".join(REFERENCE_MODELS))
    out.print("pretrained (sparsecc[models]): " + ", ".join(PRETRAINED_MODELS))


@app.command()
def inspect(
    model: str = typer.Argument(..., help="zoo name or path/to/file.py:factory"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """List the prunable layers of MODEL with shape, params and FLOPs per call."""
    from sparsecc.core.analyze import find_prunable_weights
    from sparsecc.flows.report import inspect_table

    try:
        spec, program = _capture(model)
        analysis = find_prunable_weights(program)
    except Exception as e:
        raise _fail(e) from e
    if as_json:
        out.print_json(json.dumps({
            "model": spec.name,
            "weights": [w.to_dict() for w in analysis.weights],
            "not_prunable": {s.fqn: s.reason for s in analysis.skipped},
        }))
        return
    out.print(inspect_table(analysis, title=f"prunable layers - {spec.name}"))
    for s in analysis.skipped:
        out.print(f"[dim]not prunable: {s.fqn}: {s.reason}[/dim]")


@app.command()
def sparsify(
    model: str = typer.Argument(..., help="zoo name or path/to/file.py:factory"),
    recipe: Path = typer.Option(..., "--recipe", "-r", help="recipe YAML (see README: Recipes)"),
    out_dir: Path = typer.Option(..., "--out", "-o", help="output folder (program.pt2, report.json, recipe.yaml)"),
    fold: bool = typer.Option(True, "--fold/--no-fold", help="bake masks into weights (default) or keep them in the graph"),
    force: bool = typer.Option(False, "--force", help="replace OUT if it exists"),
) -> None:
    """Sparsify MODEL with RECIPE; write the sparse program and a per-layer report.

    The program is saved with torch.export.save (load it with
    sparsecc.load_program to keep sparsecc's metadata).
    """
    import yaml

    from sparsecc.flows.sparsify import recipe_needs_calibration
    from sparsecc.flows.sparsify import sparsify as run_sparsify
    from sparsecc.bundle.staging import staged_output
    from sparsecc.plan.calibrate import calibration_for
    from sparsecc.core.program import save_program
    from sparsecc.plan.recipe import load_recipe

    try:
        rec = load_recipe(recipe)
        if out_dir.exists() and not force:
            raise FileExistsError(f"{out_dir} exists; pass --force to replace it")
        spec, program = _capture(model)
        calibration = None
        if recipe_needs_calibration(rec):
            with console.status(f"loading {rec.calibration.samples} calibration batches"):
                calibration = calibration_for(spec, rec.calibration.samples, rec.calibration.seq_len)
        with _mask_progress() as progress:
            result = run_sparsify(program, rec, fold=fold, progress=progress, model_name=spec.name,
                                  calibration=calibration)
        with staged_output(out_dir, force) as tmp:
            save_program(result.program, tmp / "program.pt2")
            (tmp / "report.json").write_text(result.report.to_json())
            (tmp / "recipe.yaml").write_text(yaml.safe_dump(rec.to_dict(), sort_keys=False))
    except Exception as e:
        raise _fail(e) from e
    result.report.print(out)
    out.print(f"wrote {out_dir}/program.pt2, report.json, recipe.yaml")


@app.command("groups")
def groups_cmd(
    model: str = typer.Argument(..., help="zoo name or path/to/file.py:factory"),
    ratio: float = typer.Option(0.5, "--ratio", help="fraction of units to remove in each prunable group"),
    units: str = typer.Option("channel,head", "--units", help="unit kinds: channel, head, strided (comma-separated)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Structured-pruning dependency groups of MODEL: the slices removed together, and why a group stays whole.

    Each group is one space of indices (conv channels, FFN neurons, attention
    heads, GQA groups) shared by every parameter slice listed in it; a group
    that reaches a model input or output, a normalisation's statistics, or an
    op without a coupling rule is kept whole and the reason is printed.
    """
    from sparsecc.passes.structured import find_dependency_groups, plan_structured_pruning

    try:
        spec, program = _capture(model)
        analysis = find_dependency_groups(program)
        plan = plan_structured_pruning(program, ratio, analysis=analysis,
                                       units=[u.strip() for u in units.split(",") if u.strip()])
    except Exception as e:
        raise _fail(e) from e
    if as_json:
        out.print_json(json.dumps({"model": spec.name, **plan.to_dict()}))
        return
    out.print(plan.table(), markup=False, highlight=False)


@app.command("compile")
def compile_cmd(
    model: str = typer.Argument(..., help="zoo name or path/to/file.py:factory"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="recipe YAML; omit to compile the dense model"),
    target: str = typer.Option("all", "--target", "-t", help="onnx, executorch, tensorrt-bundle (FP16 ONNX + trtexec build.sh for the device), tensorrt (engines built here; needs TensorRT and a GPU), torch-sparse (the PyTorch program with CPU sparse kernels on the layers where they measured faster), or all = onnx,executorch (comma-separated list allowed)"),
    out_dir: Path = typer.Option(..., "--out", "-o", help="bundle folder to write"),
    force: bool = typer.Option(False, "--force", help="replace OUT if it exists"),
    sparse_initializers: Optional[bool] = typer.Option(
        None, "--sparse-initializers/--dense-initializers",
        help="ONNX: store weights as sparse tensors where smaller (default: on for >=67%% unstructured)"),
    dense_reference: bool = typer.Option(
        True, "--dense-reference/--no-dense-reference",
        help="also lower the unpruned model into BUNDLE/dense/ for side-by-side benchmarks"),
) -> None:
    """Capture, sparsify, lower and verify MODEL into a deployment bundle.

    The bundle holds each target's artifact, the sparse PyTorch program,
    example inputs, a README, and manifest.json with versions, per-layer
    sparsity, what each target does with each layer, the pattern re-checked
    inside each artifact, and parity against the PyTorch program. Nothing is
    written unless every check passes.
    """
    from sparsecc.flows.compile import compile as run_compile
    from sparsecc.models.resolve import resolve_model
    from sparsecc.flows.report import bundle_summary

    targets = ["onnx", "executorch"] if target == "all" else [t.strip() for t in target.split(",") if t.strip()]
    try:
        if out_dir.exists() and not force:
            raise FileExistsError(f"{out_dir} exists; pass --force to replace it")
        with console.status(f"loading {model}"):
            spec = resolve_model(model)
        with console.status("compiling") as status, _mask_progress() as mask_progress:
            result = run_compile(
                spec, recipe, out_dir, targets=targets, force=force, sparse_initializers=sparse_initializers,
                dense_reference=dense_reference,
                progress=lambda msg: status.update(f"compiling {spec.name}: {msg}"), mask_progress=mask_progress,
            )
    except Exception as e:
        raise _fail(e) from e
    if result.report is not None:
        result.report.print(out)
    if result.manifest.get("structured"):  # channels / heads removed: how much smaller, and checked exact
        sm = result.manifest["structured"]["summary"]
        out.print(f"structured: {sm['pruned_groups']}/{sm['prunable_groups']} prunable groups pruned, "
                  f"{sm['removed_units']} units removed; MACs x{sm['macs_ratio']:.3f}, params x{sm['params_ratio']:.3f}; "
                  "shrunk == channel-masked on every input set (fp32, 1e-5)")
    out.print(bundle_summary(result.manifest, str(out_dir)))
    out.print(f"wrote {out_dir} (manifest.json, README.md); stages: "
              + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise ValueError(f"{flag} takes a comma-separated list of integers, got {text!r}") from e
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{flag} needs integers >= 1, got {text!r}")
    return values


@app.command("bench")
def bench_cmd(
    bundles: list[Path] = typer.Argument(..., help="bundle folders written by `sparsecc compile`"),
    backend: Optional[str] = typer.Option(None, "--backend", "-b", help="onnx, executorch, torch, torch-sparse (also timed against ONNX Runtime dense) (comma-separated; default: all the bundle has), or tensorrt alone: the per-layer 2:4 report and dense/sparse latency from the engines built on the device (build.sh)"),
    threads: str = typer.Option("1", "--threads", help="intra-op thread counts, e.g. 1,2 (each measured in its own process)"),
    batch: Optional[int] = typer.Option(None, "--batch", help="batch size (default: the example input's), within the bundle's dynamic dims"),
    seq: Optional[int] = typer.Option(None, "--seq", help="sequence length (default: the example input's)"),
    warmup: int = typer.Option(10, "--warmup", help="warm-up calls per model"),
    runs: int = typer.Option(100, "--runs", help="timed rounds (one dense and one sparse call each)"),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="seconds per measurement instead of --runs"),
    profile: bool = typer.Option(True, "--profile/--no-profile", help="per-layer profile of dense and sparse"),
    profile_runs: int = typer.Option(20, "--profile-runs", help="profiled runs per model"),
    seed: int = typer.Option(0, "--seed", help="seed for inputs and the bootstrap"),
    out_json: Path = typer.Option(..., "--out", "-o", help="RUN.json to write"),
    html: Optional[Path] = typer.Option(None, "--html", help="also write a self-contained HTML report"),
    md: Optional[Path] = typer.Option(None, "--md", help="also write the Markdown summary"),
) -> None:
    """Time each bundle's sparse model against its dense reference, layer by layer.

    Dense and sparse run interleaved in one process per backend and thread
    count; the result is the ratio of medians with a bootstrap 95% interval.
    Ctrl-C stops and still writes what was measured.
    """
    from sparsecc.benchmarking import bench as run_bench

    try:
        backends = [b.strip() for b in backend.split(",") if b.strip()] if backend else None
        if backends and "tensorrt" in backends:
            _bench_tensorrt(bundles, backends, seed, out_json, md)
            return
        thread_list = _int_list(threads, "--threads")
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            tasks: dict[str, int] = {}

            def progress(desc: str, done: float, total: float) -> None:
                if desc not in tasks:
                    tasks[desc] = bar.add_task(desc, total=total)
                bar.update(tasks[desc], completed=done, total=total)

            result = run_bench(bundles, backends=backends, threads=thread_list, batch=batch, seq=seq, warmup=warmup,
                               runs=runs, time_budget_s=time_budget, profile=profile, profile_runs=profile_runs,
                               seed=seed, progress=progress)
        result.save(out_json)
        text = result.markdown()
        if md is not None:
            md.write_text(text)
        if html is not None:
            html.write_text(result.html())
    except Exception as e:
        raise _fail(e) from e
    sys.stdout.write(text)  # Markdown as is: rich would re-wrap the tables
    written = ", ".join(str(p) for p in (out_json, md, html) if p is not None)
    out.print(f"wrote {written}")
    if result.interrupted:
        console.print("[yellow]interrupted: wrote the results measured so far[/yellow]")
        raise typer.Exit(code=130)  # the shell's code for a Ctrl-C, after the results are safe
    errors = [r for _, r in result.runs() if r["status"] == "error"]
    if errors:
        raise typer.Exit(code=1)


def _bench_tensorrt(bundles: list[Path], backends: list[str], seed: int, out_json: Path, md: Optional[Path]) -> None:
    """`bench --backend tensorrt`: the per-layer report from engine build outputs, and their dense/sparse timings."""
    from sparsecc.benchmarking.tensorrt_device import tensorrt_bench, tensorrt_markdown

    if backends != ["tensorrt"]:
        raise ValueError("--backend tensorrt reads engines built on the device; run it alone, not with "
                         + ", ".join(b for b in backends if b != "tensorrt"))
    results = [tensorrt_bench(b, seed=seed) for b in bundles]
    out_json.write_text(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    text = "\n".join(tensorrt_markdown(r) for r in results)
    if md is not None:
        md.write_text(text)
    sys.stdout.write(text)
    out.print(f"wrote {', '.join(str(p) for p in (out_json, md) if p is not None)}")


@app.command("report")
def report_cmd(
    runs: list[Path] = typer.Argument(..., help="RUN.json files written by `sparsecc bench`"),
    html: Optional[Path] = typer.Option(None, "--html", help="write a self-contained HTML report"),
    md: Optional[Path] = typer.Option(None, "--md", help="write the Markdown to this file"),
) -> None:
    """Summarise one bench result, or compare several (machines, recipes, dates)."""
    from sparsecc.benchmarking import BenchResult, compare_markdown
    from sparsecc.benchmarking.html import compare_html

    try:
        results = [BenchResult.load(p) for p in runs]
        names = [str(p) for p in runs]
        if len(results) == 1:
            text, page = results[0].markdown(), (results[0].html() if html else None)
        else:
            text, page = compare_markdown(results, names), (compare_html(results, names) if html else None)
        if md is not None:
            md.write_text(text)
        if html is not None:
            html.write_text(page)
    except Exception as e:
        raise _fail(e) from e
    sys.stdout.write(text)
    for p in (md, html):
        if p is not None:
            out.print(f"wrote {p}")


@app.command("sensitivity")
def sensitivity_cmd(
    model: str = typer.Argument(..., help="zoo name or path/to/file.py:factory"),
    out_path: Path = typer.Option(..., "--out", "-o", help="sensitivity table to write (JSON)"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="recipe whose layers to sweep (default: every layer, unstructured)"),
    levels: str = typer.Option("0.3,0.5,0.7,0.9", "--levels", help="comma-separated sparsities to prune each layer at"),
    scores: str = typer.Option("magnitude", "--scores", help="criterion that picks the pruned entries (magnitude, wanda, ...)"),
    samples: int = typer.Option(8, "--samples", help="calibration batches from the model's calibration data"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="tokens per batch (language models)"),
    force: bool = typer.Option(False, "--force", help="replace OUT if it exists"),
) -> None:
    """Prune each layer of MODEL alone at a few sparsities; write the calibration-loss increase per layer.

    The table feeds the recipe budget `{method: sensitivity, table: OUT}`,
    which gives more sparsity to the layers whose loss rises least. It costs
    one loss evaluation over the calibration batches per layer and level.
    """
    from sparsecc.core.analyze import find_prunable_weights
    from sparsecc.plan.budgets import parse_budget, sensitivity_sweep
    from sparsecc.plan.calibrate import CalibrationData, collect_stats
    from sparsecc.plan.criteria import needs_calibration
    from sparsecc.data.datasets import calibration_inputs
    from sparsecc.plan.recipe import RecipeError, load_recipe, plan_masks

    try:
        try:
            level_list = [float(v) for v in levels.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--levels takes comma-separated sparsities, got {levels!r}") from None
        try:
            level_list = list(parse_budget({"method": "sensitivity", "levels": level_list, "scores": scores}).levels)
        except RecipeError as e:  # same checks as the recipe's budget, reported as options
            flag = "--levels" if e.key.endswith("levels") else "--scores"
            raise ValueError(f"{flag}: {str(e).split(': ', 1)[1]}") from None
        if out_path.exists() and not force:
            raise FileExistsError(f"{out_path} exists; pass --force to replace it")
        rec = load_recipe(recipe if recipe is not None else {"pattern": "unstructured", "sparsity": 0.5})
        spec, program = _capture(model)
        analysis = find_prunable_weights(program)
        plan = plan_masks(rec, analysis)
        with console.status(f"drawing {samples} calibration batches"):
            data = CalibrationData(calibration_inputs(spec, samples, seq_len))
        stats = None
        if needs_calibration(scores):
            with console.status(f"collecting calibration statistics for {scores}"):
                stats = collect_stats(program, data, [s.fqn for s in plan.specs], needs_calibration(scores))
        t0 = time.perf_counter()
        with _mask_progress() as progress:
            table = sensitivity_sweep(program, plan.specs, analysis, data, levels=level_list, scores=scores,
                                      stats=stats, progress=progress, model=spec.name)
        table.save(out_path)
    except Exception as e:
        raise _fail(e) from e
    from rich.table import Table

    t = Table(title=f"calibration loss increase when one layer is pruned - {spec.name} (base loss {table.base_loss:.4g})")
    t.add_column("layer")
    for v in table.levels:
        t.add_column(f"@{v:g}", justify="right")
    for fqn, row in sorted(table.delta.items(), key=lambda kv: -kv[1][-1]):
        t.add_row(fqn, *(f"{d:.4g}" for d in row))
    out.print(t)
    out.print(f"wrote {out_path} ({len(table.delta)} layers x {len(table.levels)} levels in {time.perf_counter() - t0:.1f}s); "
              f"use it with `budget: {{method: sensitivity, table: {out_path}}}`")


@contextmanager
def _step_progress() -> Iterator:
    """``progress(desc, done, total)`` as one rich bar per description."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(desc: str, done: int, total: int) -> None:
            if desc not in tasks:
                tasks[desc] = bar.add_task(desc, total=total)
            bar.update(tasks[desc], completed=done, total=total)

        yield progress


def _eval_options(window: int, stride: Optional[int], limit: Optional[int], batch_size: Optional[int] = None,
                  seed: int = 0):
    from sparsecc.quality.evaluate import EvalOptions

    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    return EvalOptions(window=window, stride=stride, max_windows=limit, max_digits=limit, batch_size=batch_size,
                       seed=seed)


def _write_json_atomic(path: Path, data: object) -> None:
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


@app.command("eval")
def eval_cmd(
    target: str = typer.Argument(..., help="a bundle folder written by `sparsecc compile`, or MODEL (zoo name or path/to/file.py:factory)"),
    task: str = typer.Option("auto", "--task", help="perplexity, lee-similarity, photo-agreement, fashion-probe, digit-accuracy (comma-separated), or auto: every task that fits the model"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="MODEL only: sparsify with this recipe first (default: evaluate the dense program)"),
    backend: Optional[str] = typer.Option(None, "--backend", "-b", help="bundle only: onnx, executorch, torch (comma-separated; default: all the bundle has)"),
    model: Optional[str] = typer.Option(None, "--model", help="bundle only: the model whose tokenizer/normalization to use (default: the manifest's)"),
    window: int = typer.Option(256, "--window", help="perplexity: tokens per window"),
    stride: Optional[int] = typer.Option(None, "--stride", help="perplexity: window stride (default: the window, no overlap)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="evaluate only the first N perplexity windows / a seeded subset of N digits (default: all; figures are then not the protocol's)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="items per forward call (default: per task, within the bundle's dynamic dims)"),
    seed: int = typer.Option(0, "--seed", help="seed of the Fashion-MNIST probe subsets"),
    as_json: Optional[Path] = typer.Option(None, "--json", help="also write the results to this JSON file"),
) -> None:
    """Measure quality on real data: a sparse model against its dense reference.

    On MODEL: captures it (and sparsifies it with --recipe), then evaluates the
    program against the original dense model. On a bundle: evaluates each
    backend's sparse and dense builds (ONNX Runtime, ExecuTorch, program.pt2),
    each sparse one against the dense one of the same backend. The protocols
    are in the README (Evaluation) and in sparsecc/evaluate.py.
    """
    from sparsecc.quality.evaluate import default_tasks, evaluate, evaluate_bundle, results_table

    try:
        opts = _eval_options(window, stride, limit, batch_size, seed)
        is_bundle = Path(target).is_dir() and (Path(target) / "manifest.json").is_file()
        if is_bundle and recipe is not None:
            raise ValueError("--recipe applies to MODEL; a bundle is already sparse")
        if not is_bundle and (backend or model):
            raise ValueError(f"--backend/--model apply to a bundle folder (one with manifest.json); {target!r} is not one")
        results = []
        with _step_progress() as progress:
            if is_bundle:
                from sparsecc.bundle.reader import Bundle
                from sparsecc.models.resolve import resolve_model

                with console.status(f"loading {model or Bundle(target).model}"):
                    spec = resolve_model(model or Bundle(target).model)
                tasks = default_tasks(spec) if task == "auto" else [t.strip() for t in task.split(",") if t.strip()]
                backends = [b.strip() for b in backend.split(",") if b.strip()] if backend else None
                for t in tasks:
                    results += evaluate_bundle(target, t, backends=backends, model=spec, options=opts, progress=progress)
            else:
                from sparsecc.flows.sweep import sparsify_with_calibration

                spec, program = _capture(target)
                tasks = default_tasks(spec) if task == "auto" else [t.strip() for t in task.split(",") if t.strip()]
                if not tasks:
                    raise ValueError(f"no evaluation task fits {spec.name!r}: evaluation needs a real pretrained "
                                     "model (minilm, smollm2, efficientnet-lite0, mnist)")
                if recipe is not None:
                    with _mask_progress() as mask_progress:
                        program = sparsify_with_calibration(program, spec, recipe, progress=mask_progress).program
                for t in tasks:
                    # A sparse program is compared with the dense model on every metric (a dense perplexity too).
                    ref = spec.model if recipe is not None else "auto"
                    r = evaluate(program, t, model=spec, reference=ref, options=opts, progress=progress)
                    r.variant = "sparse" if recipe is not None else "dense"
                    results.append(r)
        if as_json is not None:
            _write_json_atomic(as_json, [r.to_dict() for r in results])
    except Exception as e:
        raise _fail(e) from e
    out.print(results_table(results, title=f"evaluation - {target}"))
    for r in results:
        if r.details.get("unavailable"):
            out.print(f"[dim]{r.runner} {r.variant} {r.task}: {r.details['unavailable']}[/dim]")
        elif r.details:
            out.print(f"[dim]{r.runner} {r.variant} {r.task}: "
                      + ", ".join(f"{k}={v}" for k, v in r.details.items()) + "[/dim]")
    if as_json is not None:
        out.print(f"wrote {as_json}")


def _float_list(text: str, flag: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise ValueError(f"{flag} takes a comma-separated list of numbers, got {text!r}") from e
    if not values:
        raise ValueError(f"{flag} is empty")
    return values


@app.command("sweep")
def sweep_cmd(
    model: str = typer.Argument(..., help="zoo name or path/to/file.py:factory (a real pretrained model)"),
    out_dir: Path = typer.Option(..., "--out", "-o", help="folder for sweep.json, sweep.md, sweep.png"),
    criteria: str = typer.Option("magnitude", "--criteria", "-c", help="comma-separated criteria (magnitude, random, wanda, sparsegpt, taylor, ...)"),
    patterns: str = typer.Option("unstructured", "--patterns", "-p", help="comma-separated patterns: unstructured, 2:4, 4:8, 8x8, channel (N:M: one point each)"),
    sparsities: str = typer.Option("0.3,0.5,0.7", "--sparsities", "-s", help="comma-separated sparsities for the patterns that take one"),
    task: Optional[str] = typer.Option(None, "--task", help="evaluation task (default: the model's first; see `sparsecc eval --help`)"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="base recipe (layers, budget, calibration); its pattern/sparsity/criterion are replaced per point"),
    tolerance: float = typer.Option(0.05, "--tolerance", help="quality drop against dense that ends the essential sparsity (0.05 = 5%%)"),
    calibration_samples: Optional[int] = typer.Option(None, "--calibration-samples", help="calibration batches for calibrated criteria (default: the recipe's, else 64)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="evaluate only the first N perplexity windows / a seeded subset of N digits (faster sweeps)"),
    window: int = typer.Option(256, "--window", help="perplexity: tokens per window"),
    force: bool = typer.Option(False, "--force", help="replace OUT if it exists"),
) -> None:
    """Quality against sparsity: prune MODEL at every criterion x pattern x sparsity and evaluate each.

    Writes a table (Markdown + JSON) and a plot, and the essential sparsity of
    each curve: the largest sparsity whose quality stays within --tolerance of
    dense before the first point that drops further.
    """
    from sparsecc.flows.sweep import sweep, write_sweep

    try:
        if out_dir.exists() and not force:
            raise FileExistsError(f"{out_dir} exists; pass --force to replace it")
        crits = [c.strip() for c in criteria.split(",") if c.strip()]
        pats = [p.strip() for p in patterns.split(",") if p.strip()]
        levels = _float_list(sparsities, "--sparsities")
        with console.status(f"loading {model}"):
            from sparsecc.models.resolve import resolve_model

            spec = resolve_model(model)
        with _step_progress() as progress:
            result = sweep(spec, criteria=crits, patterns=pats, sparsities=levels, task=task, recipe=recipe,
                           tolerance=tolerance, options=_eval_options(window, None, limit),
                           calibration_samples=calibration_samples, progress=progress,
                           say=lambda msg: console.print(msg, highlight=False, markup=False))
        write_sweep(result, out_dir, force=force)
    except Exception as e:
        raise _fail(e) from e
    sys.stdout.write(result.markdown())
    out.print(f"wrote {out_dir}/sweep.json, sweep.md, sweep.png")
    if any(p.error for p in result.points):
        raise typer.Exit(code=1)


def main(argv: Optional[list[str]] = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="sparsecc")


if __name__ == "__main__":
    main()

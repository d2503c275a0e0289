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
    console.print(f"[red]error:[/red] {e}", highlight=False, markup=False)
    return typer.Exit(code=1)


def _capture(ref: str):
    from sparsecc.capture import capture
    from sparsecc.modelref import resolve_model

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
    from sparsecc.analyze import find_prunable_weights
    from sparsecc.report import inspect_table

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

    from sparsecc.api import sparsify as run_sparsify
    from sparsecc.bundle import staged_output
    from sparsecc.program import save_program
    from sparsecc.recipe import load_recipe

    try:
        rec = load_recipe(recipe)
        if out_dir.exists() and not force:
            raise FileExistsError(f"{out_dir} exists; pass --force to replace it")
        spec, program = _capture(model)
        with _mask_progress() as progress:
            result = run_sparsify(program, rec, fold=fold, progress=progress, model_name=spec.name)
        with staged_output(out_dir, force) as tmp:
            save_program(result.program, tmp / "program.pt2")
            (tmp / "report.json").write_text(result.report.to_json())
            (tmp / "recipe.yaml").write_text(yaml.safe_dump(rec.to_dict(), sort_keys=False))
    except Exception as e:
        raise _fail(e) from e
    result.report.print(out)
    out.print(f"wrote {out_dir}/program.pt2, report.json, recipe.yaml")


@app.command("compile")
def compile_cmd(
    model: str = typer.Argument(..., help="zoo name or path/to/file.py:factory"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="recipe YAML; omit to compile the dense model"),
    target: str = typer.Option("all", "--target", "-t", help="onnx, executorch, or all (comma-separated list allowed)"),
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
    from sparsecc.compile import compile as run_compile
    from sparsecc.modelref import resolve_model
    from sparsecc.report import bundle_summary

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
    backend: Optional[str] = typer.Option(None, "--backend", "-b", help="onnx, executorch, torch (comma-separated; default: all the bundle has)"),
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


def main(argv: Optional[list[str]] = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="sparsecc")


if __name__ == "__main__":
    main()

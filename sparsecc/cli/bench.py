"""`sparsecc bench` and `report`: dense against sparse timings, and their summaries."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sparsecc.cli.app import app, console, fail, int_list, out

__all__: list[str] = []


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
        thread_list = int_list(threads, "--threads")
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
        raise fail(e) from e
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
        raise fail(e) from e
    sys.stdout.write(text)
    for p in (md, html):
        if p is not None:
            out.print(f"wrote {p}")

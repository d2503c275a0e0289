"""`sparsecc bench` and `report`: dense against sparse timings, and their summaries."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sparsecc.cli.app import JSON_OPTION, SHAPES_OPTION, activity, app, console, emit, int_list, out, settings
from sparsecc.errors import BenchError, SparseccError, UsageError

__all__: list[str] = ["LOAD_WARNING", "speed_verdict", "best_dense_verdict", "int8_both_verdict"]

# A 1-minute load average above this (per machine, not per core: the bench uses 1-2 threads)
# means other work competes for the cores and absolute times are not to be trusted.
LOAD_WARNING = 1.5


def speed_verdict(rows: list[tuple[str, dict[str, Any] | None]], what: str = "sparse", base: str = "dense") -> str:
    """One line from ``[(where, comparison)]``: "sparse is 1.80x faster than dense on onnx" or "no speed-up"."""
    from sparsecc.benchmarking.stats import FASTER, SLOWER

    faster = [(w, c) for w, c in rows if c and c.get("label") == FASTER]
    slower = [(w, c) for w, c in rows if c and c.get("label") == SLOWER]
    if not any(c and c.get("ratio") for _, c in rows):
        return f"verdict: no comparison ({base} reference missing or not measured)"
    parts = [f"{what} is {c['ratio']:.2f}x faster than {base} on {w}" for w, c in faster]
    parts += [f"{what} is {1 / c['ratio']:.2f}x slower than {base} on {w}" for w, c in slower]
    unchanged = [w for w, c in rows if c and c.get("ratio") and (w, c) not in faster + slower]
    if unchanged:
        parts.append(f"no speed-up on {', '.join(unchanged)} (95% interval includes 1)")
    return "verdict: " + ("; ".join(parts) if faster or slower else "no speed-up (" + parts[-1] + ")")


def best_dense_verdict(runs: Any) -> str:
    """`speed_verdict` against the fastest dense model of each run (fp32 or ONNX Runtime int8), or ""
    when no run has a dense model besides its own: the comparison a user deciding on sparsity makes."""
    rows = []
    for _b, r in runs:
        if r["status"] != "ok" or not r.get("references"):
            continue
        cands = {r["backend"]: r.get("comparison"), **r["references"]}
        cands = {k: c for k, c in cands.items() if c and c.get("ratio")}
        if cands:  # the smallest ratio (reference p50 / sparse p50) is the fastest dense model
            name, c = min(cands.items(), key=lambda kv: kv[1]["ratio"])
            rows.append((f"{r['backend']} (best dense: {name})", c))
    if not rows:
        return ""
    return "against the best dense: " + speed_verdict(rows, base="the best dense model").removeprefix("verdict: ")


def int8_both_verdict(runs: Any) -> str:
    """`speed_verdict` of the sparse model against the dense one with both quantized to int8 by ONNX Runtime
    (``int8_both`` of onnx runs), or "" when no run measured it."""
    rows = [(r["backend"], r["int8_both"]) for _b, r in runs if r["status"] == "ok" and r.get("int8_both")]
    if not rows:
        return ""
    return "both in int8 (ONNX Runtime quantize_dynamic): " + speed_verdict(rows).removeprefix("verdict: ")


def _warn_if_loaded() -> float | None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None and load > LOAD_WARNING:
        console.print(f"warning: 1-minute load average is {load:.2f} (> {LOAD_WARNING}): other work competes "
                      "for the CPU, absolute timings are unreliable (the dense/sparse ratio less so)",
                      style="yellow", markup=False, highlight=False)
    return load


def _show_markdown(text: str) -> None:
    """Rich tables on a terminal; the Markdown as is into a pipe or file."""
    if out.is_terminal:
        from rich.markdown import Markdown

        out.print(Markdown(text))
    else:
        out.file.write(text)
        out.file.flush()


def _bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                    TimeElapsedColumn(), console=console, transient=True, disable=settings.quiet)


@app.command("bench", short_help="Time sparse against dense; or time model files.")
def bench_cmd(
    targets: list[Path] = typer.Argument(..., metavar="BUNDLE_OR_FILE",
                                         help="Bundle folders (sparsecc compile), or .onnx / .pte files: one is "
                                              "timed alone, several are compared with the first."),
    backend: Optional[str] = typer.Option(
        None, "--backend", "-b", metavar="BACKENDS",
        help="Bundles: onnx, onnx-custom-ops, executorch, executorch-custom-ops, torch, torch-sparse "
             "(comma-separated; default: all the bundle has), "
             "or tensorrt alone: the per-layer 2:4 report and the engines' latency from the device."),
    threads: str = typer.Option("1", "--threads", metavar="N[,N]",
                                help="Intra-op thread counts, e.g. 1,2 (each in its own process)."),
    shapes: Optional[str] = SHAPES_OPTION,
    batch: Optional[int] = typer.Option(None, "--batch", hidden=True, help="Old spelling of --shapes' batch dim."),
    seq: Optional[int] = typer.Option(None, "--seq", hidden=True, help="Old spelling of --shapes' seq dim."),
    warmup: int = typer.Option(10, "--warmup", metavar="N", help="Warm-up calls per model."),
    runs: int = typer.Option(100, "--runs", metavar="N", help="Timed rounds (one call of each model per round)."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", metavar="SECONDS",
                                                help="Seconds per measurement instead of --runs."),
    profile: bool = typer.Option(True, "--profile/--no-profile", help="Per-layer profile of dense and sparse."),
    profile_runs: int = typer.Option(20, "--profile-runs", metavar="N", help="Profiled runs per model."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed for inputs and the bootstrap."),
    out_json: Optional[Path] = typer.Option(None, "--out", "-o", metavar="RUN_JSON",
                                            help="Bench record to write (bundles: needed by sparsecc report)."),
    html: Optional[Path] = typer.Option(None, "--html", metavar="FILE", help="Also write an HTML report."),
    md: Optional[Path] = typer.Option(None, "--md", metavar="FILE", help="Also write the Markdown summary."),
    json_out: Optional[str] = JSON_OPTION,
) -> None:
    """Time sparse against dense, layer by layer; or time plain model files.

    Dense and sparse run interleaved in one process per backend and thread
    count; the result is the ratio of medians with a bootstrap 95% interval,
    and the last line is the verdict. Ctrl-C stops and still writes what was
    measured.
    """
    from sparsecc.cli.shapes import bench_dims, parse_shapes

    wanted = parse_shapes(shapes)
    files = [t for t in targets if not t.is_dir()]
    if files:
        if len(files) != len(targets):
            raise UsageError("bench takes bundle folders or model files, not both at once")
        return _bench_files(files, wanted, int_list(threads, "--threads"), warmup, runs, time_budget, seed,
                            out_json, md)
    if out_json is None:
        raise UsageError("bench on bundles needs --out RUN.json (the record sparsecc report reads)")
    backends = [b.strip() for b in backend.split(",") if b.strip()] if backend else None
    if backends and "tensorrt" in backends:
        return _bench_tensorrt(targets, backends, seed, out_json, md)
    if wanted:
        from sparsecc.bundle.reader import Bundle

        if batch is not None or seq is not None:
            raise UsageError("give --shapes, or the older --batch/--seq, not both")
        first = Bundle(targets[0])
        batch, seq = bench_dims(wanted, first.inputs, str(first.path / "manifest.json"))
    _warn_if_loaded()
    result = _run_bundles(targets, backends, int_list(threads, "--threads"), batch, seq, warmup, runs,
                          time_budget, profile, profile_runs, seed)
    result.save(out_json)
    text = result.markdown()
    if md is not None:
        md.write_text(text)
    if html is not None:
        html.write_text(result.html())
    _show_markdown(text)
    out.print(f"wrote {', '.join(str(p) for p in (out_json, md, html) if p is not None)}", highlight=False)
    several = len(targets) > 1
    rows = [((f"{b['model']} " if several else "") + r["backend"]
             + (f" with {r['threads']} threads" if len(int_list(threads, "--threads")) > 1 else ""),
             r.get("comparison")) for b, r in result.runs() if r["status"] == "ok"]
    out.print(speed_verdict(rows), highlight=False, soft_wrap=True)
    for line in (best_dense_verdict(result.runs()), int8_both_verdict(result.runs())):
        if line:
            out.print(line, highlight=False, soft_wrap=True)
    emit(result.data)
    if result.interrupted:
        console.print("interrupted: wrote the results measured so far", style="yellow", markup=False)
        raise typer.Exit(code=130)  # the shell's code for a Ctrl-C, after the results are safe
    errors = [r for _, r in result.runs() if r["status"] == "error"]
    if errors:
        raise BenchError("; ".join(f"{r['backend']}: {r['error']}" for r in errors))


def _run_bundles(bundles, backends, thread_list, batch, seq, warmup, runs, time_budget, profile, profile_runs,
                 seed):
    from sparsecc.benchmarking import bench as run_bench

    with activity("bench") as act, _bar() as bar:
        tasks: dict[str, int] = {}

        def progress(desc: str, done: float, total: float) -> None:
            if desc not in tasks:
                tasks[desc] = bar.add_task(desc, total=total)
                act.step(f"timing {desc}")
            bar.update(tasks[desc], completed=done, total=total)
            act.detail(f"{100 * done / max(total, 1e-9):.0f}%")

        return run_bench(bundles, backends=backends, threads=thread_list, batch=batch, seq=seq, warmup=warmup,
                         runs=runs, time_budget_s=time_budget, profile=profile, profile_runs=profile_runs,
                         seed=seed, progress=progress)


def _bench_files(files: list[Path], wanted, thread_list: list[int], warmup: int, runs: int,
                 time_budget: Optional[float], seed: int, out_json: Optional[Path], md: Optional[Path]) -> None:
    """`bench model.onnx [other.onnx ...]`: latency of each file, each compared with the first."""
    from sparsecc.benchmarking.files import bench_files
    from sparsecc.benchmarking.format import ms
    from sparsecc.cli.app import write_json_atomic

    if len(thread_list) != 1:
        raise UsageError("bench on model files takes one --threads value")
    dims = {}
    for name, s in wanted.items():
        if s.min != s.max:
            raise UsageError(f"--shapes {name}: bench runs one shape per input; give one shape")
        dims[name] = s.opt
    _warn_if_loaded()
    with activity("bench") as act, _bar() as bar:
        act.step("timing " + ", ".join(str(f) for f in files))
        task = bar.add_task("timing", total=None)

        def progress(done: float, total: float) -> None:
            bar.update(task, completed=done, total=total)
            act.detail(f"{100 * done / max(total, 1e-9):.0f}%")

        data = bench_files(files, shapes=dims, threads=thread_list[0], warmup=warmup, runs=runs,
                           time_budget_s=time_budget, seed=seed, progress=progress)
    lines = ["| file | backend | size | p50 ms | p90 ms | vs first |", "|---|---|---:|---:|---:|---|"]
    for f in data["files"]:
        lat, c = f["latency_ms"], f["comparison"]
        vs = f"{c['ratio']:.2f}x [{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}] {c['label']}" if c else "-"
        lines.append(f"| {f['name']} | {f['backend']} | {f['bytes'] / 1e6:.2f} MB | {ms(lat['p50'])} | "
                     f"{ms(lat['p90'])} | {vs} |")
    text = "\n".join(lines) + "\n\ninputs: " + ", ".join(f"{k} {'x'.join(map(str, v))}"
                                                         for k, v in data["settings"]["shapes"].items()) + "\n"
    if md is not None:
        md.write_text(text)
    if out_json is not None:
        write_json_atomic(out_json, data)
    _show_markdown(text)
    if len(files) > 1:
        out.print(_files_verdict(data), highlight=False, soft_wrap=True)
    emit(data)
    if data["interrupted"]:
        raise typer.Exit(code=130)


def _files_verdict(data: dict[str, Any]) -> str:
    from sparsecc.benchmarking.stats import FASTER, SLOWER

    base = data["files"][0]["name"]
    parts = []
    for f in data["files"][1:]:
        c = f["comparison"] or {}
        if c.get("label") == FASTER:
            parts.append(f"{f['name']} is {c['ratio']:.2f}x faster than {base}")
        elif c.get("label") == SLOWER:
            parts.append(f"{f['name']} is {1 / c['ratio']:.2f}x slower than {base}")
        else:
            parts.append(f"{f['name']}: no speed-up over {base}")
    return "verdict: " + "; ".join(parts)


def _bench_tensorrt(bundles: list[Path], backends: list[str], seed: int, out_json: Path, md: Optional[Path]) -> None:
    """`bench --backend tensorrt`: the per-layer report from engine build outputs, and their dense/sparse timings."""
    from sparsecc.benchmarking.tensorrt_device import tensorrt_bench, tensorrt_markdown

    if backends != ["tensorrt"]:
        raise UsageError("--backend tensorrt reads engines built on the device; run it alone, not with "
                         + ", ".join(b for b in backends if b != "tensorrt"))
    results = [tensorrt_bench(b, seed=seed) for b in bundles]
    try:
        out_json.write_text(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    except OSError as e:
        raise SparseccError(f"cannot write {out_json}: {e.strerror or e}") from e
    text = "\n".join(tensorrt_markdown(r) for r in results)
    if md is not None:
        md.write_text(text)
    _show_markdown(text)
    out.print(f"wrote {', '.join(str(p) for p in (out_json, md) if p is not None)}", highlight=False)
    emit(results[0] if len(results) == 1 else results)


@app.command("report", short_help="Summarise one bench record or compare several.")
def report_cmd(
    runs: list[Path] = typer.Argument(..., metavar="RUN_JSON", help="Records written by sparsecc bench --out."),
    html: Optional[Path] = typer.Option(None, "--html", metavar="FILE", help="Write a self-contained HTML report."),
    md: Optional[Path] = typer.Option(None, "--md", metavar="FILE", help="Write the Markdown to this file."),
    json_out: Optional[str] = JSON_OPTION,
) -> None:
    """Summarise one bench result, or compare several (machines, recipes, dates)."""
    from sparsecc.benchmarking import BenchResult, compare_markdown
    from sparsecc.benchmarking.html import compare_html

    results = [BenchResult.load(p) for p in runs]
    names = [str(p) for p in runs]
    if len(results) == 1:
        text, page = results[0].markdown(), (results[0].html() if html else None)
    else:
        text, page = compare_markdown(results, names), (compare_html(results, names) if html else None)
    try:
        if md is not None:
            md.write_text(text)
        if html is not None:
            html.write_text(page)
    except OSError as e:
        raise SparseccError(f"cannot write {e.filename}: {e.strerror or e}") from e
    _show_markdown(text)
    for p in (md, html):
        if p is not None:
            out.print(f"wrote {p}", highlight=False)
    emit({"runs": [r.data for r in results]})

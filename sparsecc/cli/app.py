"""The typer app, the options and helpers every verb shares, and the one error handler.

A verb is one module in this package that decorates its function with
``@app.command``; ``sparsecc/cli/__init__.py`` imports it.
"""

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

__all__ = [
    "app", "main", "console", "out", "fail", "capture_model", "mask_progress", "step_progress", "int_list",
    "float_list", "eval_options", "write_json_atomic",
]

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


def fail(e: BaseException) -> "typer.Exit":
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
    return typer.Exit(code=1)


def capture_model(ref: str):
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
def mask_progress() -> Iterator:
    with Progress(
        TextColumn("computing masks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.description}"), console=console, transient=True,
    ) as bar:
        task = bar.add_task("", total=None)

        def update(i: int, n: int, fqn: str) -> None:
            bar.update(task, total=n, completed=i, description=fqn)

        yield update





def int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise ValueError(f"{flag} takes a comma-separated list of integers, got {text!r}") from e
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{flag} needs integers >= 1, got {text!r}")
    return values



@contextmanager
def float_list(text: str, flag: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise ValueError(f"{flag} takes a comma-separated list of numbers, got {text!r}") from e
    if not values:
        raise ValueError(f"{flag} is empty")
    return values


@contextmanager
def step_progress() -> Iterator:
    """``progress(desc, done, total)`` as one rich bar per description."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(desc: str, done: int, total: int) -> None:
            if desc not in tasks:
                tasks[desc] = bar.add_task(desc, total=total)
            bar.update(tasks[desc], completed=done, total=total)

        yield progress


def eval_options(window: int, stride: Optional[int], limit: Optional[int], batch_size: Optional[int] = None,
                  seed: int = 0):
    from sparsecc.quality.evaluate import EvalOptions

    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    return EvalOptions(window=window, stride=stride, max_windows=limit, max_digits=limit, batch_size=batch_size,
                       seed=seed)


def write_json_atomic(path: Path, data: object) -> None:
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)




def main(argv: Optional[list[str]] = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="sparsecc")

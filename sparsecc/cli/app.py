"""The typer app, the options and helpers every verb shares, and the one error handler.

A verb is one module in this package that decorates its function with
``@app.command``; ``sparsecc/cli/__init__.py`` imports it. Verbs raise
`sparsecc.errors.SparseccError` and never catch it: `SparseccGroup.invoke`
prints ``error: MESSAGE`` and exits with the error's code.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

from sparsecc.cli.activity import Activity
from sparsecc.cli.noise import filtered_stderr, quiet_third_party
from sparsecc.errors import SparseccError, UsageError, exit_code

__all__ = [
    "app", "main", "console", "out", "settings", "EXIT_CODES", "JSON_OPTION", "SHAPES_OPTION", "emit",
    "activity", "capture_model", "mask_progress", "one_shot_masks", "step_progress", "int_list", "float_list", "eval_options",
    "write_json_atomic", "recipe_source", "refuse_existing",
]

EXIT_CODES = (
    "Exit codes: 0 ok, 1 a step failed, 2 usage (bad option, recipe, model, "
    "shape), 3 missing dependency, 4 verification failed, 130 interrupted."
)
MODEL_HELP = (
    "MODEL is a zoo name (sparsecc models) or path/to/file.py:factory, where "
    "factory() returns a sparsecc.models.ModelSpec or (model, example_args"
    "[, example_kwargs[, dynamic_shapes]]). RECIPE is a YAML file or a built-in "
    "name (sparsecc recipes)."
)


@dataclass
class Settings:
    """What the global options asked for, for the command being run."""

    verbose: bool = False
    quiet: bool = False
    json_dest: Optional[str] = None  # "-" = stdout
    command: str = ""


settings = Settings()
# Piped output gets a wide table rather than rich's default of 80 columns.
console = Console(stderr=True, emoji=False, soft_wrap=True)  # messages are not cut at 80 columns
out = Console(emoji=False) if sys.stdout.isatty() else Console(width=150, emoji=False)
JSON_OPTION = typer.Option(None, "--json", metavar="FILE",
                           help="Write the result as JSON: to stdout (--json) or to FILE (--json FILE).")
SHAPES_OPTION = typer.Option(None, "--shapes", metavar="SHAPES",
                             help="Input shapes, e.g. input_ids:1x128; min,opt,max for dynamic "
                                  "dims: input_ids:1x16,1x128,4x256.")
_GLOBAL_FLAGS = {"-v": "verbose", "--verbose": "verbose", "-q": "quiet", "--quiet": "quiet"}


def _hoist(args: list[str]) -> list[str]:
    """Global flags may follow the verb (``sparsecc compile ... -v``); a bare ``--json`` means stdout."""
    head, rest, tail = [], [], []
    if "--" in args:
        i = args.index("--")
        args, tail = args[:i], args[i:]
    for i, a in enumerate(args):
        if a in _GLOBAL_FLAGS:
            head.append(a)
        elif a == "--json":
            nxt = args[i + 1] if i + 1 < len(args) else ""
            takes_file = nxt == "-" or nxt.endswith(".json")  # otherwise --json=FILE names any other file
            rest.append("--json" if takes_file else "--json=-")
        else:
            rest.append(a)
    return head + rest + tail


def _json_dest(args: list[str]) -> Optional[str]:
    for i, a in enumerate(args):
        if a.startswith("--json="):
            return a.split("=", 1)[1]
        if a == "--json" and i + 1 < len(args):
            return args[i + 1]
    return None


class SparseccGroup(TyperGroup):
    """The app's click group: global flags anywhere, and the one place errors become exit codes."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        args = _hoist(list(args))
        settings.json_dest = _json_dest(args)
        flags = args[:args.index("--")] if "--" in args else args
        settings.verbose = any(a in ("-v", "--verbose") for a in flags)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        json_to_stdout = settings.json_dest == "-"
        if json_to_stdout:  # stdout carries the JSON alone; tables go to stderr
            out.file = sys.stderr
        try:
            with filtered_stderr(enabled=not settings.verbose):
                return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.exceptions.TyperException, KeyboardInterrupt):
            raise
        except SparseccError as e:
            _report_error(e, exit_code(e))
            raise typer.Exit(exit_code(e)) from None
        except Exception as e:  # a bug, not a reported failure: say where to look
            _report_error(e, 1, unexpected=True)
            raise typer.Exit(1) from None
        finally:
            out.file = None  # type: ignore[assignment]  # back to the current sys.stdout


def _report_error(e: BaseException, code: int, unexpected: bool = False) -> None:
    from rich.markup import escape

    message = f"{type(e).__name__}: {e}" if unexpected else str(e)
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    if unexpected:
        if settings.verbose:
            console.print("".join(traceback.format_exception(e)), markup=False, highlight=False)
        else:
            where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
            at = f" (raised at {Path(where.filename).name}:{where.lineno})" if where else ""
            console.print(f"this is a bug in sparsecc or a library it uses{at}; run with -v for the traceback",
                          markup=False, highlight=False)
    if settings.json_dest:
        emit(None, error={"type": type(e).__name__, "message": str(e), "exit_code": code})


app = typer.Typer(
    cls=SparseccGroup,
    help="sparsecc: a sparsity compiler for PyTorch models.\n\n" + MODEL_HELP,
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"max_content_width": 80, "help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from sparsecc import __version__

        out.print(f"sparsecc {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Show other libraries' warnings and logs, and tracebacks."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print results and errors only, no progress."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    if verbose and quiet:
        raise UsageError("-v and -q contradict each other; give one")
    settings.verbose, settings.quiet = verbose, quiet
    settings.command = ctx.invoked_subcommand or ""
    quiet_third_party(verbose)
    # torch.export.save triggers a pytree deprecation warning that users cannot act on.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)


def emit(result: Any, *, error: Optional[dict[str, Any]] = None) -> None:
    """Write the command's JSON, the same envelope for every verb, where --json asked for it."""
    from sparsecc import __version__

    if not settings.json_dest:
        return
    doc = {"sparsecc": __version__, "command": settings.command, "ok": error is None,
           "exit_code": error["exit_code"] if error else 0, "result": result, "error": error}
    text = json.dumps(doc, indent=2, default=str)
    if settings.json_dest == "-":
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    else:
        write_json_atomic(Path(settings.json_dest), doc)


def activity(label: str) -> Activity:
    """Step lines with elapsed time and a 10 s heartbeat on stderr (silent with -q)."""
    return Activity(console, label, quiet=settings.quiet)


def refuse_existing(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to replace it")


def recipe_source(value: Optional[str]) -> Optional[Path]:
    """A recipe option's file: a path, or a built-in name (``2of4``); checked before any model loads."""
    from sparsecc.recipes import builtin_recipe, builtin_recipes

    if value is None:
        return None
    path = Path(value)
    if not path.exists():
        found = builtin_recipe(value)
        if found is None:
            raise UsageError(f"recipe {value!r}: no such file and no built-in recipe of that name "
                             f"(built-in: {', '.join(builtin_recipes())}; see sparsecc recipes)")
        path = found
    if not path.is_file():
        raise UsageError(f"recipe {path} is not a file")
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"recipe {path} is not a text YAML file (byte {e.start} is not UTF-8)") from None
    return path


def capture_model(ref: str, shapes: Optional[str] = None):
    from sparsecc.cli.shapes import apply_shapes, parse_shapes
    from sparsecc.core.capture import capture
    from sparsecc.models.resolve import resolve_model

    wanted = parse_shapes(shapes)
    with activity(ref) as act:
        act.step("loading the model")
        spec = apply_shapes(resolve_model(ref), wanted)
        act.step("capturing with torch.export")
        program = capture(spec.model, spec.example_args, spec.example_kwargs, spec.dynamic_shapes)
    return spec, program


@contextmanager
def mask_progress(act: Optional[Activity] = None) -> Iterator:
    with Progress(
        TextColumn("computing masks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.description}"), console=console, transient=True, disable=settings.quiet,
    ) as bar:
        task = bar.add_task("", total=None)

        def update(i: int, n: int, fqn: str) -> None:
            bar.update(task, total=n, completed=i, description=fqn)
            if act is not None:
                act.detail(f"masks {i}/{n} {fqn}")

        yield update


def one_shot_masks(act: Activity, spec: Any, program: Any, rec: Any, *, fold: bool = True, ranks: Any = None):
    """`sparsecc.sparsify` of a captured zoo model for a CLI verb: the recipe's calibration batches when it
    needs them, mask progress on ``act``. Returns the `SparsifyResult`."""
    from sparsecc.flows.sparsify import recipe_calibration
    from sparsecc.flows.sparsify import sparsify as run_sparsify

    calibration = recipe_calibration(spec, rec, act.step)
    act.step("computing masks")
    with mask_progress(act) as progress:
        return run_sparsify(program, rec, fold=fold, progress=progress, model_name=spec.name,
                            calibration=calibration, ranks=ranks)


def int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes a comma-separated list of integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"{flag} needs integers >= 1, got {text!r}")
    return values


def float_list(text: str, flag: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes a comma-separated list of numbers, got {text!r}") from None
    if not values:
        raise UsageError(f"{flag} is empty")
    return values


@contextmanager
def step_progress(act: Optional[Activity] = None) -> Iterator:
    """``progress(desc, done, total)`` as one rich bar per description (and the heartbeat's detail)."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=settings.quiet) as bar:
        tasks: dict[str, int] = {}

        def progress(desc: str, done: int, total: int) -> None:
            if desc not in tasks:
                tasks[desc] = bar.add_task(desc, total=total)
                if act is not None:
                    act.step(desc)
            bar.update(tasks[desc], completed=done, total=total)
            if act is not None:
                act.detail(f"{done}/{total}")

        yield progress


def eval_options(window: int, stride: Optional[int], limit: Optional[int], batch_size: Optional[int] = None,
                 seed: int = 0):
    from sparsecc.quality.evaluate import EvalOptions

    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be >= 1, got {limit}")
    return EvalOptions(window=window, stride=stride, max_windows=limit, max_digits=limit, batch_size=batch_size,
                       seed=seed)


def write_json_atomic(path: Path, data: object) -> None:
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        raise SparseccError(f"cannot write {path}: {e.strerror or e}") from e


def main(argv: Optional[list[str]] = None) -> None:
    from sparsecc.bundle.staging import interrupt_guard

    # Record every Ctrl-C of this command from its start, so one swallowed by a library (an import
    # that catches everything, a torch cleanup callback) still stops a compile before its bundle is
    # replaced; the record ends with the command (a later command in this process starts clean).
    with interrupt_guard():
        app(args=argv if argv is not None else sys.argv[1:], prog_name="sparsecc")

"""Pass infrastructure: passes over whole `ExportedProgram`s and a manager to run them.

A pass checks its own contract: `requires` before, `ensures` after, and
returns a `PassResult` (a new program, never the input mutated, and whether
anything changed). `PassManager` runs an ordered list, is itself a pass (so
pipelines nest) and takes instruments that see every pass go by.

Failures surface as `PassError` naming the pass and, when a pass reports it
with `PassBase.at(node)`, the node it was working on.
"""

from __future__ import annotations

import abc
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.fx
from torch.export import ExportedProgram
from sparsecc.errors import SparseccError

__all__ = [
    "PassResult",
    "PassBase",
    "PassError",
    "PreconditionError",
    "PostconditionError",
    "PassManager",
    "PassInstrument",
    "TimingInstrument",
    "GraphDumpInstrument",
    "VerifyInstrument",
    "intra_op_threads",
]


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Run torch ops with ``n`` intra-op threads inside (None: leave as is)."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass
class PassResult:
    program: ExportedProgram
    modified: bool


class PassError(SparseccError, RuntimeError):
    """A pass failed. ``pass_name`` and ``node`` (if known) say where."""

    def __init__(self, pass_name: str, message: str, node: str | None = None):
        where = f" at node {node}" if node else ""
        super().__init__(f"{pass_name}{where}: {message}")
        self.pass_name, self.node, self.detail = pass_name, node, message


class PreconditionError(PassError):
    pass


class PostconditionError(PassError):
    pass


class PassBase(abc.ABC):
    """One graph transform or analysis. Subclasses implement `call`.

    ``threads``: intra-op threads for `call` (None: torch's setting). Passes
    whose tensor work is one elementwise sweep per weight set 1: handing each
    op to a thread pool costs more than it saves, and far more on a busy machine.
    """

    threads: int | None = None

    @property
    def name(self) -> str:
        return type(self).__name__

    def requires(self, program: ExportedProgram) -> None:
        """Raise (any exception) when ``program`` is not a valid input."""

    def ensures(self, program: ExportedProgram) -> None:
        """Raise (any exception) when the output breaks the pass's promise."""

    @abc.abstractmethod
    def call(self, program: ExportedProgram) -> PassResult: ...

    @contextlib.contextmanager
    def at(self, node: torch.fx.Node | str) -> Iterator[None]:
        """Attribute any exception raised inside to ``node``."""
        try:
            yield
        except PassError:
            raise
        except Exception as e:
            name = node if isinstance(node, str) else node.name
            raise PassError(self.name, f"{type(e).__name__}: {e}", name) from e

    def __call__(self, program: ExportedProgram) -> PassResult:
        try:
            self.requires(program)
        except PassError:
            raise
        except Exception as e:
            raise PreconditionError(self.name, str(e)) from e
        try:
            with intra_op_threads(self.threads):
                result = self.call(program)
        except PassError:
            raise
        except Exception as e:
            raise PassError(self.name, f"{type(e).__name__}: {e}") from e
        try:
            self.ensures(result.program)
        except PassError:
            raise
        except Exception as e:
            raise PostconditionError(self.name, str(e)) from e
        return result

    def __repr__(self) -> str:
        return f"{self.name}()"


class PassInstrument:
    """Hooks around every pass a `PassManager` runs (nested managers included)."""

    def before(self, pass_: PassBase, program: ExportedProgram) -> None:
        pass

    def after(self, pass_: PassBase, result: PassResult) -> None:
        pass


class TimingInstrument(PassInstrument):
    """Wall time per pass, in run order: ``timings = [(pass name, seconds), ...]``."""

    def __init__(self) -> None:
        self.timings: list[tuple[str, float]] = []
        self._starts: list[float] = []

    def before(self, pass_: PassBase, program: ExportedProgram) -> None:
        self._starts.append(time.perf_counter())

    def after(self, pass_: PassBase, result: PassResult) -> None:
        self.timings.append((pass_.name, time.perf_counter() - self._starts.pop()))

    def total(self) -> float:
        return sum(t for name, t in self.timings if name != "PassManager")


class GraphDumpInstrument(PassInstrument):
    """Write the graph after each pass to ``folder/NN_PassName.txt``."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.count = 0

    def before(self, pass_: PassBase, program: ExportedProgram) -> None:
        if self.count == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "00_input.txt").write_text(str(program.graph))

    def after(self, pass_: PassBase, result: PassResult) -> None:
        if isinstance(pass_, PassManager):
            return
        self.count += 1
        text = f"# {pass_.name} modified={result.modified}\n{result.program.graph}"
        (self.folder / f"{self.count:02d}_{pass_.name}.txt").write_text(text)


class VerifyInstrument(PassInstrument):
    """After each pass: the program must validate and, given inputs, still run."""

    def __init__(self, example_inputs: tuple[tuple[Any, ...], dict[str, Any]] | None = None):
        self.example_inputs = example_inputs

    def after(self, pass_: PassBase, result: PassResult) -> None:
        if isinstance(pass_, PassManager):
            return
        try:
            result.program.validate()
            if self.example_inputs is not None:
                args, kwargs = self.example_inputs
                result.program.module()(*args, **kwargs)
        except Exception as e:
            raise PostconditionError(pass_.name, f"program no longer valid: {type(e).__name__}: {e}") from e


class PassManager(PassBase):
    """Run passes in order; stop at the first failure, which names the pass."""

    def __init__(
        self,
        passes: Sequence[PassBase],
        instruments: Sequence[PassInstrument] = (),
        name: str | None = None,
    ):
        self.passes = list(passes)
        self.instruments = list(instruments)
        self._name = name

    @property
    def name(self) -> str:
        return self._name or "PassManager"

    def _run(self, p: PassBase, program: ExportedProgram, instruments: list[PassInstrument]) -> PassResult:
        for ins in instruments:
            ins.before(p, program)
        if isinstance(p, PassManager):
            result = p._call_with(program, instruments + p.instruments)
        else:
            result = p(program)
        for ins in instruments:
            ins.after(p, result)
        return result

    def _call_with(self, program: ExportedProgram, instruments: list[PassInstrument]) -> PassResult:
        modified = False
        for p in self.passes:
            result = self._run(p, program, instruments)
            program, modified = result.program, modified or result.modified
        return PassResult(program, modified)

    def call(self, program: ExportedProgram) -> PassResult:
        return self._call_with(program, list(self.instruments))

    def __repr__(self) -> str:
        return f"{self.name}([{', '.join(map(repr, self.passes))}])"


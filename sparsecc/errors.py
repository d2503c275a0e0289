"""The one error hierarchy: every failure sparsecc reports is a `SparseccError`.

The command line catches `SparseccError` once, prints its message (which
names the layer, op, file or value at fault) and exits with the kind's code:

====  ===================  ====================================================
code  kind                 meaning
====  ===================  ====================================================
0                          success
1     `SparseccError`      a step failed (capture, lowering, compile, bench)
2     `UsageError`         bad input: recipe, option, model reference, shapes
3     `DependencyError`    something to install: an extra, a compiler, data
4     `VerificationError`  a pattern, parity or file-hash check failed
130                        interrupted (Ctrl-C); nothing was replaced
====  ===================  ====================================================

Specific errors keep the built-in base they always had (``ValueError``,
``RuntimeError``, ``ImportError``) as a second base, so existing ``except``
clauses keep working.
"""

from __future__ import annotations

__all__ = [
    "SparseccError",
    "UsageError",
    "DependencyError",
    "VerificationError",
    "BenchError",
    "EXIT_INTERRUPTED",
    "exit_code",
]

EXIT_INTERRUPTED = 130


class SparseccError(Exception):
    """Base of every error sparsecc raises on purpose; ``exit_code`` is the CLI's exit status."""

    exit_code = 1


class UsageError(SparseccError):
    """The input is wrong: a recipe key, an option, a model reference, a shape, a file."""

    exit_code = 2


class DependencyError(SparseccError):
    """Something must be installed first (an extra, a compiler, a data set); the message says what."""

    exit_code = 3


class VerificationError(SparseccError):
    """A check of the result failed: a sparsity pattern, output parity, a file hash."""

    exit_code = 4


class BenchError(SparseccError, RuntimeError):
    """A bundle, option or runtime that cannot be benchmarked; the message names the value at fault."""


def exit_code(error: BaseException) -> int:
    """The CLI exit status for ``error``: its kind's code, 130 for an interrupt, 1 otherwise."""
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return getattr(error, "exit_code", 1) if isinstance(error, SparseccError) else 1

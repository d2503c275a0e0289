"""Writing output folders atomically: all or nothing, never half-written.

- ``force`` replaces only an earlier output of sparsecc (a bundle's
  ``manifest.json``, or the ``OUTPUT_MARKER`` file every staged folder gets)
  or an empty folder; any other existing path is refused (`OutputExistsError`),
  so ``--force`` never deletes a user's own files.
- A SIGINT during the staged write is recorded by a handler (a
  ``KeyboardInterrupt`` raised inside a torch cleanup callback can be
  swallowed) and checked before the final rename: the run stops with
  ``KeyboardInterrupt`` (exit 130) and the previous output stays as it was.
- ``.NAME.tmp-*`` / ``.NAME.old-*`` leftovers of killed runs are removed by
  the next run that writes NAME.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sparsecc.bundle.manifest import is_bundle
from sparsecc.errors import UsageError

__all__ = ["staged_output", "check_replaceable", "OUTPUT_MARKER", "is_sparsecc_output", "clean_leftovers", "OutputExistsError", "interrupted_check",
           "interrupt_guard"]


# Written into every folder staged_output produces (sparsify, recover, sweep, compile), so that
# --force can tell an earlier output of sparsecc from a folder of the user's own files.
OUTPUT_MARKER = ".sparsecc-output"


def is_sparsecc_output(path: str | os.PathLike) -> bool:
    """True for a folder sparsecc wrote: a bundle (manifest.json) or one holding `OUTPUT_MARKER`."""
    return is_bundle(path) or (Path(path) / OUTPUT_MARKER).is_file()


class OutputExistsError(UsageError, FileExistsError):
    """The output path exists and may not be replaced (not a bundle, not empty, or no --force)."""


def check_replaceable(out_dir: str | os.PathLike, force: bool) -> None:
    """Raise `OutputExistsError` unless ``out_dir`` is absent, or ``force`` and an earlier output / empty folder."""
    out_dir = Path(out_dir)
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not force:
        raise OutputExistsError(f"{out_dir} exists; pass --force (force=True) to replace it")
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} is a file, not an output folder; --force replaces only an earlier "
                                "output of sparsecc (a bundle with manifest.json, or a folder holding "
                                f"{OUTPUT_MARKER}) or an empty folder")
    if not is_sparsecc_output(out_dir) and any(out_dir.iterdir()):
        raise OutputExistsError(f"{out_dir} is a folder with files but no manifest.json or {OUTPUT_MARKER}, not "
                                "an earlier output of sparsecc; --force replaces only such an output or an empty "
                                "folder: remove it yourself or pick another --out")


def clean_leftovers(out_dir: str | os.PathLike) -> list[Path]:
    """Remove ``.NAME.tmp-*`` / ``.NAME.old-*`` beside ``out_dir`` left by runs that were killed."""
    out_dir = Path(out_dir)
    if not out_dir.parent.is_dir():
        return []
    removed = []
    for pattern in (f".{out_dir.name}.tmp-*", f".{out_dir.name}.old-*"):
        for p in out_dir.parent.glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


_guards: list["_SigintGuard"] = []
_committing = [False]


class _SigintGuard:
    """Records SIGINT while installed (nestable); `check` raises KeyboardInterrupt once one arrived."""

    def __init__(self) -> None:
        self.hit = False
        self._previous = None

    def __enter__(self) -> "_SigintGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, _handle)
        _guards.append(self)
        return self

    def check(self) -> None:
        if self.hit:
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        _guards.remove(self)
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _handle(signum, frame) -> None:
    for g in _guards:
        g.hit = True
    # Stop the work now where it can be stopped; if a cleanup callback swallows
    # this, the check before the rename still stops the run. Inside the rename
    # itself only record it: the swap of two folders is not torn in half.
    if not _committing[0]:
        raise KeyboardInterrupt


def interrupt_guard() -> _SigintGuard:
    """A context manager that records SIGINT, so no interrupt is lost before `staged_output`'s rename."""
    return _SigintGuard()


def interrupted_check() -> None:
    """Raise KeyboardInterrupt when a SIGINT arrived while a guard was installed."""
    for g in _guards:
        g.check()


@contextmanager
def staged_output(out_dir: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out_dir``; move it into place on success.

    A failure or an interrupt leaves no half-written ``out_dir``, no temporary
    folder, and the previous ``out_dir`` as it was; an existing ``out_dir`` is
    replaced only under `check_replaceable`'s rules, once the new one is complete.
    """
    out_dir = Path(out_dir)
    check_replaceable(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _SigintGuard() as guard:
        clean_leftovers(out_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the bundle is not
            (tmp / OUTPUT_MARKER).write_text("written by sparsecc; `--force` may replace this folder\n")
            yield tmp
            _committing[0] = True
            try:
                interrupted_check()  # every guard: one installed by the caller saw the whole run
                guard.check()
                _replace(tmp, out_dir)
            finally:
                _committing[0] = False
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _replace(tmp: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        os.replace(old, out_dir)  # put the previous bundle back
        raise
    shutil.rmtree(old, ignore_errors=True)

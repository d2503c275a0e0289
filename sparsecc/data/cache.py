"""The data cache: where fetched data lives, atomic writes, and running the fetch tools.

Cache: ``$SPARSECC_DATA``, else ``$XDG_CACHE_HOME/sparsecc/data``, else
``~/.cache/sparsecc/data``. Every file is written to a temporary name and
renamed into place, so a killed fetch never leaves half a file behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from sparsecc.errors import DependencyError

__all__ = ["DataUnavailableError", "FETCH_HINT", "atomic_write", "cached_index", "data_dir", "run_tool"]

FETCH_HINT = "make data  (or: python -m sparsecc.data fetch)"


class DataUnavailableError(DependencyError, RuntimeError):
    """A data set is not installed here and could not be fetched; the message says how to get it."""


def data_dir() -> Path:
    """The cache folder (``$SPARSECC_DATA`` overrides the default)."""
    env = os.environ.get("SPARSECC_DATA")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sparsecc" / "data"


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; cached data is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_tool(cmd: Sequence[str], cwd: Path, timeout: float = 600) -> None:
    try:
        res = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataUnavailableError(f"`{' '.join(cmd)}` failed: {e}") from e
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise DataUnavailableError(f"`{' '.join(cmd)}` exited with {res.returncode}: {' | '.join(tail)}")


def cached_index(folder: Path, fetch: Callable[[], Path], what: str) -> dict[str, Any]:
    """The ``index.json`` of a cache ``folder`` that ``fetch`` fills (writing the index last), fetched
    first when missing; a failed fetch says where ``what`` was looked for and the command that gets it."""
    if not (folder / "index.json").is_file():
        try:
            folder = fetch()
        except DataUnavailableError as e:
            raise DataUnavailableError(f"{what} are not in {folder} and could not be fetched ({e}); "
                                       f"run: {FETCH_HINT}") from e
    return json.loads((folder / "index.json").read_text())

"""Files of a Debian package, read without installing it: ``apt-get download`` and ``dpkg-deb``.

Both tools run as any user (no root): the ``.deb`` lands in a scratch folder and
its file tree is streamed out of ``dpkg-deb --fsys-tarfile`` one member at a time.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Iterator

from sparsecc.data.cache import DataUnavailableError, run_tool

__all__ = ["package_files"]


def package_files(package: str, folder: str | Path, suffix: str, tmp: Path) -> Iterator[tuple[str, bytes]]:
    """``(path under folder, bytes)`` of each file ending in ``suffix`` that ``package`` installs under the
    absolute ``folder``; the ``.deb`` is downloaded into ``tmp``."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise DataUnavailableError(f"{tool} is not installed (the files come from Debian's {package})")
    run_tool(["apt-get", "download", package], tmp)
    debs = sorted(tmp.glob(f"{package}_*.deb"))
    if not debs:
        raise DataUnavailableError(f"apt-get download {package} produced no .deb")
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[0])], stdout=subprocess.PIPE)
    prefix = "./" + Path(folder).relative_to("/").as_posix() + "/"
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name if member.name.startswith("./") else "./" + member.name
                if member.isfile() and name.startswith(prefix) and name.endswith(suffix):
                    f = tar.extractfile(member)
                    if f is not None:
                        yield name[len(prefix):], f.read()
    finally:
        proc.stdout.close()
        if proc.wait() != 0:
            raise DataUnavailableError(f"dpkg-deb --fsys-tarfile {debs[0].name} exited with {proc.returncode}")

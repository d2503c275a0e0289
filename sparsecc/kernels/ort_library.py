"""The ONNX Runtime custom-op library: ``libsparsecc_ort.so``, domain ``sparsecc``, ops ``SparseMatMul``,
``SparseConv1x1`` and ``SparseMatMulInt8``.

Built with g++ from ``ort_sparse_matmul.cpp``, which includes the same kernel
sources as the torch operators (``spmm_isa.h`` -> ``spmm_body.h`` for fp32,
``int8_driver.h`` -> ``int8_isa.h`` -> ``int8_body.h`` for int8). It needs
only ONNX Runtime's C API headers, no ONNX Runtime library: the runtime hands
its API table to ``RegisterCustomOps`` when a session registers the library.

The headers come from Debian's ``libonnxruntime-dev`` package, pinned by
version and SHA-256 (`HEADERS_PACKAGE`), fetched with ``apt-get download``
through a private apt state (nothing is installed system-wide) into
``$SPARSECC_ORT_CACHE`` (default ``~/.cache/sparsecc/ort``). C API 21 runs
under every later ONNX Runtime (1.21 .. 1.32 here). ``SPARSECC_ORT_INCLUDE``
names another folder holding ``onnxruntime_c_api.h`` instead (a NuGet or
conda copy, for example).

``python -m sparsecc.kernels.ort_library`` fetches the headers and builds the
library (the Makefile's set-up does this once).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from sparsecc.errors import DependencyError

__all__ = [
    "DOMAIN",
    "OP_TYPE",
    "OP_TYPES",
    "LIBRARY_NAME",
    "HEADERS_PACKAGE",
    "OrtLibraryError",
    "headers_dir",
    "fetch_headers",
    "build_library",
]

DOMAIN = "sparsecc"
OP_TYPE = "SparseMatMul"
OP_TYPES = (OP_TYPE, "SparseConv1x1", "SparseMatMulInt8")
LIBRARY_NAME = "libsparsecc_ort.so"
# Debian 13's ONNX Runtime headers (C API 21): the pinned package, its suite and the .deb's SHA-256.
HEADERS_PACKAGE = {
    "name": "libonnxruntime-dev",
    "version": "1.21.0+dfsg-1",
    "suite": "trixie",
    "sha256": "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08",
}
_MIRROR = "http://deb.debian.org/debian"
_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
_SOURCE_DIR = Path(__file__).resolve().parent
_SOURCES = ("ort_sparse_matmul.cpp", "spmm_isa.h", "spmm_body.h", "int8_driver.h", "int8_isa.h", "int8_body.h")
_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-fno-math-errno", "-fno-trapping-math",
          # the bundle's .so must load beside any ONNX Runtime wheel: no libstdc++ version of ours required
          "-static-libstdc++", "-static-libgcc"]


class OrtLibraryError(DependencyError, RuntimeError):
    """The ONNX Runtime headers could not be fetched, or the custom-op library not built."""


def _cache() -> Path:
    return Path(os.environ.get("SPARSECC_ORT_CACHE") or Path.home() / ".cache" / "sparsecc" / "ort")


def headers_dir() -> Path:
    """The folder holding ``onnxruntime_c_api.h`` (``SPARSECC_ORT_INCLUDE`` or the pinned package's copy)."""
    given = os.environ.get("SPARSECC_ORT_INCLUDE")
    if given:
        return Path(given)
    return _cache() / f"{HEADERS_PACKAGE['name']}_{HEADERS_PACKAGE['version']}" / "include" / "onnxruntime"


def _run(cmd: list[str], what: str) -> None:
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as e:
        raise OrtLibraryError(f"{what}: {cmd[0]} is not installed ({e})") from e
    except subprocess.CalledProcessError as e:
        tail = (e.stderr or e.stdout or "").strip()[-1500:]
        raise OrtLibraryError(f"{what} failed ({' '.join(cmd[:3])} ...): {tail}") from e


def fetch_headers() -> Path:
    """Fetch and unpack the pinned ``libonnxruntime-dev`` once; return `headers_dir`."""
    include = headers_dir()
    if (include / "onnxruntime_c_api.h").is_file():
        return include
    if os.environ.get("SPARSECC_ORT_INCLUDE"):
        raise OrtLibraryError(f"SPARSECC_ORT_INCLUDE={include} holds no onnxruntime_c_api.h")
    pkg = HEADERS_PACKAGE
    root = include.parent.parent
    with tempfile.TemporaryDirectory(prefix="sparsecc-ort-") as tmp:
        t = Path(tmp)
        # A private apt state for one suite: the machine's own sources and packages stay untouched.
        for d in ("lists/partial", "cache/archives/partial"):
            (t / d).mkdir(parents=True)
        (t / "sources.list").write_text(f"deb [signed-by={_KEYRING}] {_MIRROR} {pkg['suite']} main\n")
        opts = [f"-o=Dir::Etc::SourceList={t / 'sources.list'}", "-o=Dir::Etc::SourceParts=/dev/null",
                f"-o=Dir::State::Lists={t / 'lists'}", f"-o=Dir::Cache={t / 'cache'}", "-o=Dir::State::status=/dev/null",
                "-o=APT::Sandbox::User=root", "-qq"]
        what = f"fetching the ONNX Runtime headers ({pkg['name']}={pkg['version']} from Debian {pkg['suite']})"
        _run(["apt-get", *opts, "update"], what)
        subprocess.run(["apt-get", *opts, "download", f"{pkg['name']}={pkg['version']}"], cwd=t, check=False,
                       capture_output=True, text=True, timeout=600)
        debs = list(t.glob(f"{pkg['name']}_*.deb"))
        if not debs:
            raise OrtLibraryError(f"{what}: apt-get download gave no .deb (is {pkg['version']} still in "
                                  f"{pkg['suite']}?); or set SPARSECC_ORT_INCLUDE to a folder with onnxruntime_c_api.h")
        digest = hashlib.sha256(debs[0].read_bytes()).hexdigest()
        if digest != pkg["sha256"]:
            raise OrtLibraryError(f"{what}: {debs[0].name} has SHA-256 {digest}, pinned {pkg['sha256']}")
        _run(["dpkg-deb", "-x", str(debs[0]), str(t / "x")], what)
        got = t / "x" / "usr" / "include" / "onnxruntime"
        if not (got / "onnxruntime_c_api.h").is_file():
            raise OrtLibraryError(f"{what}: the package has no usr/include/onnxruntime/onnxruntime_c_api.h")
        stage = root.with_name(root.name + ".partial")
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        shutil.copytree(got, stage / "include" / "onnxruntime")
        shutil.rmtree(root, ignore_errors=True)
        stage.rename(root)  # whole or absent: an interrupted fetch is redone
    return include


def _fingerprint(include: Path) -> str:
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update((_SOURCE_DIR / name).read_bytes())
    h.update((include / "onnxruntime_c_api.h").read_bytes())
    h.update(" ".join(_FLAGS).encode())
    return h.hexdigest()[:16]


def build_library() -> Path:
    """The path of ``libsparsecc_ort.so`` for the current sources, compiling it (about 10 s) when missing."""
    include = fetch_headers()
    out = _cache() / "build" / _fingerprint(include) / LIBRARY_NAME
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    cxx = os.environ.get("CXX", "g++")
    partial = out.with_name(f"{LIBRARY_NAME}.{os.getpid()}.partial")
    _run([cxx, *_FLAGS, f"-I{include}", f"-I{_SOURCE_DIR}", str(_SOURCE_DIR / "ort_sparse_matmul.cpp"),
          "-o", str(partial)], f"building {LIBRARY_NAME} from {_SOURCE_DIR / 'ort_sparse_matmul.cpp'}")
    partial.rename(out)  # atomic: a concurrent build of the same sources writes the same file
    return out


if __name__ == "__main__":
    path = build_library()
    print(f"sparsecc ONNX Runtime custom ops: {path} (headers {HEADERS_PACKAGE['name']} "
          f"{HEADERS_PACKAGE['version']} in {headers_dir()})", file=sys.stderr)

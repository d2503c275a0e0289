"""The ExecuTorch kernel library: ``libsparsecc_executorch.so``, ops ``sparsecc::et_sparse_linear.out`` and
``sparsecc::et_sparse_conv1x1.out``.

Built with g++ from ``et_sparse_ops.cpp``, which includes the same kernel
sources as the torch operators and the ONNX Runtime library (``spmm_isa.h``
-> ``spmm_body.h``), against the C++ headers the executorch wheel ships
(``executorch/include``) and linked to the wheel's own ``lib/libexecutorch.so``
and ``lib/libexecutorch_threadpool.so`` (the ones the Python runtime loads),
with their folder as the run path. Loading it registers both kernels in that
runtime's operator registry; `load_et_library` does so once per process,
after importing the Python runtime, so both resolve to one registry.

The build is cached under ``$SPARSECC_ET_CACHE`` (default
``~/.cache/sparsecc/executorch``), in a folder named by a fingerprint of the
sources, the flags and the executorch install, and written atomically.
``python -m sparsecc.kernels.et_library`` builds it and prints its path.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import importlib.util
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

from sparsecc.errors import DependencyError

__all__ = [
    "LIBRARY_NAME",
    "OP_NAMES",
    "EtLibraryError",
    "executorch_dir",
    "build_et_library",
    "load_et_library",
    "loaded_library",
    "library_isa",
    "last_error",
    "clear_error",
]

LIBRARY_NAME = "libsparsecc_executorch.so"
OP_NAMES = ("sparsecc::et_sparse_linear.out", "sparsecc::et_sparse_conv1x1.out")  # as the runtime registry names them
_SOURCE_DIR = Path(__file__).resolve().parent
_SOURCES = ("et_sparse_ops.cpp", "spmm_isa.h", "spmm_body.h")
_RUNTIME_LIBS = ("libexecutorch.so", "libexecutorch_threadpool.so")
# Headers whose layout the kernel depends on: a changed runtime ABI gives another fingerprint.
_ABI_HEADERS = ("runtime/kernel/operator_registry.h", "runtime/core/evalue.h",
                "runtime/core/portable_type/tensor_impl.h", "runtime/kernel/kernel_runtime_context.h")
# What executorch's CMake package asks a consumer to compile with (share/cmake/executorch-config.cmake);
# ET_USE_THREADPOOL declares parallel_for from libexecutorch_threadpool.so instead of a serial inline one.
_DEFINES = ["-DC10_USING_CUSTOM_GENERATED_MACROS", "-DET_EVENT_TRACER_ENABLED", "-DET_USE_THREADPOOL"]
_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-fno-math-errno", "-fno-trapping-math"]

_lock = threading.Lock()
_state: dict[str, object] = {"path": None, "handle": None}


class EtLibraryError(DependencyError, RuntimeError):
    """The ExecuTorch kernel library could not be built or loaded; the message names the file."""


def _cache() -> Path:
    return Path(os.environ.get("SPARSECC_ET_CACHE") or Path.home() / ".cache" / "sparsecc" / "executorch")


def executorch_dir() -> Path:
    """The installed executorch package folder (found without importing it)."""
    spec = importlib.util.find_spec("executorch")
    places = list(spec.submodule_search_locations or []) if spec is not None else []
    if not places:
        raise EtLibraryError(f"building {LIBRARY_NAME} needs the executorch package: "
                             "pip install 'sparsecc[executorch]'")
    return Path(places[0])


def _layout(root: Path) -> tuple[Path, Path, Path]:
    """(include dir, c10 include dir, lib dir) of the wheel, checked."""
    include, lib = root / "include", root / "lib"
    c10 = include / "executorch" / "runtime" / "core" / "portable_type" / "c10"
    missing = [str(p) for p in (include / "executorch" / h for h in _ABI_HEADERS) if not p.is_file()]
    missing += [str(lib / n) for n in _RUNTIME_LIBS if not (lib / n).is_file()]
    if not (c10 / "c10").is_dir():
        missing.append(str(c10 / "c10"))
    if missing:
        raise EtLibraryError(f"building {LIBRARY_NAME}: this executorch install ({root}) lacks the C++ headers "
                             f"or runtime libraries it needs: {', '.join(missing[:4])}")
    return include, c10, lib


def _fingerprint(root: Path) -> str:
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update((_SOURCE_DIR / name).read_bytes())
    for name in _ABI_HEADERS:
        h.update((root / "include" / "executorch" / name).read_bytes())
    for name in _RUNTIME_LIBS:  # the run path is absolute: another install is another build
        st = (root / "lib" / name).stat()
        h.update(f"{root / 'lib' / name}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(" ".join(_FLAGS + _DEFINES).encode())
    return h.hexdigest()[:16]


def build_et_library() -> Path:
    """The path of ``libsparsecc_executorch.so`` for the current sources, compiling it (about 10 s) when missing."""
    root = executorch_dir()
    include, c10, lib = _layout(root)
    out = _cache() / "build" / _fingerprint(root) / LIBRARY_NAME
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    cxx = os.environ.get("CXX", "g++")
    partial = out.with_name(f"{LIBRARY_NAME}.{os.getpid()}.partial")
    source = _SOURCE_DIR / "et_sparse_ops.cpp"
    cmd = [cxx, *_FLAGS, *_DEFINES, f"-I{include}", f"-I{c10}", f"-I{_SOURCE_DIR}", str(source), "-o", str(partial),
           f"-L{lib}", "-lexecutorch", "-lexecutorch_threadpool", f"-Wl,-rpath,{lib}"]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as e:
        raise EtLibraryError(f"building {LIBRARY_NAME} from {source}: the C++ compiler {cxx} is not installed "
                             "(set CXX or install g++)") from e
    except subprocess.CalledProcessError as e:
        partial.unlink(missing_ok=True)
        tail = (e.stderr or e.stdout or "").strip()[-1500:]
        raise EtLibraryError(f"building {LIBRARY_NAME} from {source} failed: {tail}") from e
    partial.rename(out)  # atomic: a concurrent build of the same sources writes the same file
    return out


def _runtime_ops() -> set[str]:
    runtime = importlib.import_module("executorch.runtime")
    return set(runtime.Runtime.get().operator_registry.operator_names)


def load_et_library(path: str | Path | None = None) -> Path:
    """Load the kernel library (``path``, default a fresh `build_et_library`) into this process, once.

    The Python runtime is imported first, so the library binds to the
    ``libexecutorch.so`` that runtime uses (even a copy whose run path does not
    resolve here). Raises `EtLibraryError` naming the file when it cannot be
    loaded or the runtime does not see its kernels afterwards. Later calls
    return the path loaded first: the kernels are registered once per process.
    """
    given = Path(path) if path is not None else None
    if given is not None and not given.is_file():
        raise EtLibraryError(f"the ExecuTorch kernel library {given} is missing")
    with _lock:
        loaded = _state["path"]
        if loaded is not None:
            if given is not None and not _same_file(given, Path(str(loaded))):
                warnings.warn(f"{given} differs from {loaded}, whose kernels this process registered already "
                              "and keeps running", stacklevel=2)
            return Path(str(loaded))
        lib = given if given is not None else build_et_library()
        try:
            have = _runtime_ops()
        except ImportError as e:
            raise EtLibraryError(f"loading {lib} needs the executorch Python runtime: {e}") from e
        try:
            handle = ctypes.CDLL(str(lib.resolve()), mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise EtLibraryError(f"cannot load the ExecuTorch kernel library {lib}: {e}") from e
        missing = [op for op in OP_NAMES if op not in _runtime_ops()]
        if missing:
            raise EtLibraryError(
                f"loaded {lib}, but the ExecuTorch runtime does not list {', '.join(missing)}: the library links "
                "another libexecutorch.so than the Python runtime's (rebuild it against this executorch install)")
        if all(op in have for op in OP_NAMES):  # registered before us, by code we did not load
            warnings.warn(f"{', '.join(OP_NAMES)} were already registered in this process; {lib} adds nothing",
                          stacklevel=2)
        for name, restype in (("SparseccEtIsa", ctypes.c_char_p), ("SparseccEtLastError", ctypes.c_char_p)):
            getattr(handle, name).restype = restype
        _state.update(path=lib, handle=handle)
        return lib


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve() or a.read_bytes() == b.read_bytes()


def loaded_library() -> Path | None:
    """The library loaded in this process, or None."""
    return Path(str(_state["path"])) if _state["path"] is not None else None


def _handle() -> ctypes.CDLL:
    if _state["handle"] is None:
        load_et_library()
    return _state["handle"]  # type: ignore[return-value]


def library_isa() -> str:
    """The instruction set the library's kernels run with (``avx512``, ``avx2``, ``portable``)."""
    return _handle().SparseccEtIsa().decode()


def last_error() -> str:
    """The message of the last failed kernel call on this thread ("" when none, or nothing loaded)."""
    if _state["handle"] is None:
        return ""
    return (_handle().SparseccEtLastError() or b"").decode(errors="replace")


def clear_error() -> None:
    if _state["handle"] is not None:
        _handle().SparseccEtClearError()


if __name__ == "__main__":
    print(f"sparsecc ExecuTorch kernels: {build_et_library()} (executorch at {executorch_dir()})", file=sys.stderr)

"""The fp32 (spmm_isa.h) and int8 (int8_isa.h) sparse kernels natively and on AArch64 (NEON, sdot) under qemu.

tests/kernels/native/spmm_selftest.cpp runs `spmm_tiles` for every instruction
set the CPU has over CSR and BSR weights (blocks 2-16), 1-130 tokens, strided
X and Y, with and without bias, against a float64 reference (a tolerance from
fp32 accumulation for random values, bit-exact for integer values). It is
built natively with g++ (always) and cross-built statically with
aarch64-linux-gnu-g++ and run with qemu-aarch64 (Debian packages
g++-aarch64-linux-gnu and qemu-user; `make arm-tools` installs them). Under
qemu it checks correctness only: qemu timings say nothing about an ARM CPU.
tests/kernels/native/int8_selftest.cpp does the same for the int8 kernels
(bit-exact against int64 sums); under qemu also with `-cpu cortex-a53`, a
CPU without the dot-product extension, where only `portable` may run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "kernels" / "native" / "spmm_selftest.cpp"
INT8_SOURCE = ROOT / "tests" / "kernels" / "native" / "int8_selftest.cpp"
INCLUDE = ROOT / "sparsecc" / "kernels"
CROSS_CXX = "aarch64-linux-gnu-g++"
QEMUS = ("qemu-aarch64", "qemu-aarch64-static")
ARM_PACKAGES = "g++-aarch64-linux-gnu qemu-user"


def _compile(cxx: str, out: Path, *extra: str, source: Path = SOURCE) -> Path:
    # -Wno-maybe-uninitialized: GCC 12 warns inside its own AVX-512 intrinsics (_mm512_broadcast_i32x4)
    cmd = [cxx, "-O2", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-Wno-maybe-uninitialized", *extra,
           "-I", str(INCLUDE), str(source), "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}"
    return out


def _run(cmd: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SPARSECC_ISA"}
    env.update(env_extra or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def _field(stdout: str, name: str) -> str:
    for line in stdout.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no '{name}:' line in the self-test's output:\n{stdout}")


@pytest.fixture(scope="module")
def native_selftest(tmp_path_factory) -> Path:
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ is not on the PATH (Debian package g++)")
    return _compile(cxx, tmp_path_factory.mktemp("native") / "spmm_selftest")


@pytest.fixture(scope="module")
def native_int8_selftest(native_selftest, tmp_path_factory) -> Path:
    return _compile(shutil.which("g++"), tmp_path_factory.mktemp("native") / "int8_selftest", source=INT8_SOURCE)


def _arm_tools() -> tuple[str, str]:
    """The cross compiler and qemu; skips naming the Debian packages when one is missing."""
    missing = []
    cross = shutil.which(CROSS_CXX)
    if cross is None:
        missing.append(f"{CROSS_CXX} (Debian package g++-aarch64-linux-gnu)")
    qemu = next((q for q in map(shutil.which, QEMUS) if q), None)
    if qemu is None:
        missing.append("qemu-aarch64 (Debian package qemu-user or qemu-user-static)")
    if missing:
        pytest.skip(f"no AArch64 cross build: missing {', '.join(missing)}; "
                    f"`apt-get install {ARM_PACKAGES}` or `make arm-tools` (as root)")
    return cross, qemu


@pytest.fixture(scope="module")
def arm_selftest(tmp_path_factory) -> list[str]:
    """The command running the AArch64 self-test under qemu."""
    cross, qemu = _arm_tools()
    binary = _compile(cross, tmp_path_factory.mktemp("aarch64") / "spmm_selftest", "-static")
    return [qemu, str(binary)]


@pytest.fixture(scope="module")
def arm_int8_selftest(tmp_path_factory) -> tuple[str, str]:
    """qemu and the AArch64 int8 self-test."""
    cross, qemu = _arm_tools()
    binary = _compile(cross, tmp_path_factory.mktemp("aarch64") / "int8_selftest", "-static", source=INT8_SOURCE)
    return qemu, str(binary)


def _assert_passes(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, f"self-test failed (exit {done.returncode}):\n{done.stdout[-6000:]}{done.stderr[-2000:]}"
    assert done.stdout.splitlines()[-1].startswith("ok: "), done.stdout


def _assert_catches(done: subprocess.CompletedProcess, isa: str) -> None:
    """--self-check-fail spoils one output after the kernel ran: the harness must fail and name the case."""
    assert done.returncode == 1, f"a wrong output went unnoticed (exit {done.returncode}):\n{done.stdout}"
    fails = [line for line in done.stdout.splitlines() if line.startswith("FAIL ")]
    assert len(fails) == 1, done.stdout
    assert f"isa={isa} csr block=1" in fails[0] and "T=1 " in fails[0] and "> tol" in fails[0], fails[0]


def test_native_selftest_passes_on_every_isa(native_selftest):
    done = _run([str(native_selftest)])
    _assert_passes(done)
    tested = _field(done.stdout, "isas tested").split(",")
    assert tested[-1] == "portable"
    if _field(done.stdout, "arch") == "x86_64":
        assert set(tested) <= {"avx512", "avx2", "portable"}  # the x86 table is unchanged


def test_native_selftest_catches_a_wrong_output(native_selftest):
    done = _run([str(native_selftest), "--self-check-fail", "--quiet"])
    _assert_catches(done, _field(done.stdout, "isas tested").split(",")[0])


def test_native_isas_match_the_torch_loader(native_selftest):
    """The header's choice (best_isa) is what sparsecc.kernels.isa() reports in a fresh process."""
    from sparsecc import kernels

    kernels.load()
    start = kernels.isa()
    try:
        # the loader's choice at load time is best_isa(); `isa` may have been switched by other tests
        done = _run([str(native_selftest), "--quiet"])
        best = _field(done.stdout, "best_isa")
        kernels.isa(best)  # raises when the torch operators do not know the name or the CPU lacks it
        assert best in _field(done.stdout, "isas tested").split(",")
    finally:
        kernels.isa(start)


def test_aarch64_neon_under_qemu(arm_selftest):
    done = _run(arm_selftest)
    _assert_passes(done)
    assert _field(done.stdout, "arch") == "aarch64"
    assert _field(done.stdout, "best_isa") == "neon"
    assert _field(done.stdout, "isas tested") == "neon,portable"


def test_aarch64_portable_forced_under_qemu(arm_selftest):
    done = _run(arm_selftest + ["--list"], {"SPARSECC_ISA": "portable"})  # the cases ran in the test above
    assert done.returncode == 0, done.stdout + done.stderr
    assert _field(done.stdout, "best_isa") == "portable"
    assert _field(done.stdout, "isas tested") == "neon,portable"


def test_aarch64_selftest_catches_a_wrong_output(arm_selftest):
    _assert_catches(_run(arm_selftest + ["--self-check-fail", "--quiet"]), "neon")


def test_int8_kernels_compile_for_aarch64():
    """int8_spmm.cpp (the torch operator: sdot and portable paths, no x86 intrinsics) compiles for AArch64.

    Checked against this venv's torch headers (-fsyntax-only): nothing runs, there is no AArch64 torch here.
    """
    cross = shutil.which(CROSS_CXX)
    if cross is None:
        pytest.skip(f"missing {CROSS_CXX} (Debian package g++-aarch64-linux-gnu); `make arm-tools` (as root)")
    from torch.utils.cpp_extension import include_paths

    cmd = [cross, "-std=c++20", "-fsyntax-only", "-Wall", "-Werror", *(a for p in include_paths() for a in ("-isystem", p)),
           "-I", str(INCLUDE), str(INCLUDE / "int8_spmm.cpp")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"int8_spmm.cpp does not compile for AArch64:\n{done.stderr[-4000:]}"


def _assert_int8_catches(done: subprocess.CompletedProcess, isa: str) -> None:
    assert done.returncode == 1, f"a wrong int8 output went unnoticed (exit {done.returncode}):\n{done.stdout}"
    fails = [line for line in done.stdout.splitlines() if line.startswith("FAIL ")]
    assert len(fails) == 1 and f"isa={isa} blocks=1x4" in fails[0] and "exact" in fails[0], done.stdout


def test_native_int8_selftest(native_int8_selftest):
    done = _run([str(native_int8_selftest)])
    _assert_passes(done)
    tested = _field(done.stdout, "int8 isas tested").split(",")
    assert tested[-1] == "portable"
    bad = _run([str(native_int8_selftest), "--self-check-fail"])
    _assert_int8_catches(bad, tested[0])


def test_aarch64_int8_sdot_under_qemu(arm_int8_selftest):
    qemu, binary = arm_int8_selftest
    done = _run([qemu, binary])  # qemu's default CPU ("max") has the dot-product extension
    _assert_passes(done)
    assert _field(done.stdout, "int8 isas tested") == "neon,portable"
    _assert_int8_catches(_run([qemu, binary, "--self-check-fail"]), "neon")


def test_aarch64_int8_without_dotprod_under_qemu(arm_int8_selftest):
    """A Cortex-A53 (Armv8.0) has no sdot: cpu_has("neon") must say so, and portable still runs."""
    qemu, binary = arm_int8_selftest
    done = _run([qemu, "-cpu", "cortex-a53", binary])
    _assert_passes(done)
    assert _field(done.stdout, "int8 isas tested") == "portable"

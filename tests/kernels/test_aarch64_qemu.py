"""The fp32 sparse kernels (spmm_isa.h) on x86-64 natively and on AArch64 (NEON) under qemu.

tests/kernels/native/spmm_selftest.cpp runs `spmm_tiles` for every instruction
set the CPU has over CSR and BSR weights (blocks 2-16), 1-130 tokens, strided
X and Y, with and without bias, against a float64 reference (a tolerance from
fp32 accumulation for random values, bit-exact for integer values). It is
built natively with g++ (always) and cross-built statically with
aarch64-linux-gnu-g++ and run with qemu-aarch64 (Debian packages
g++-aarch64-linux-gnu and qemu-user; `make arm-tools` installs them). Under
qemu it checks correctness only: qemu timings say nothing about an ARM CPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "kernels" / "native" / "spmm_selftest.cpp"
INCLUDE = ROOT / "sparsecc" / "kernels"
CROSS_CXX = "aarch64-linux-gnu-g++"
QEMUS = ("qemu-aarch64", "qemu-aarch64-static")
ARM_PACKAGES = "g++-aarch64-linux-gnu qemu-user"


def _compile(cxx: str, out: Path, *extra: str) -> Path:
    cmd = [cxx, "-O2", "-std=c++17", "-Wall", "-Wextra", "-Werror", *extra, "-I", str(INCLUDE), str(SOURCE),
           "-o", str(out)]
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
def arm_selftest(tmp_path_factory) -> list[str]:
    """The command running the AArch64 self-test under qemu."""
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
    binary = _compile(cross, tmp_path_factory.mktemp("aarch64") / "spmm_selftest", "-static")
    return [qemu, str(binary)]


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
    done = _run(arm_selftest + ["--quiet"], {"SPARSECC_ISA": "portable"})
    _assert_passes(done)
    assert _field(done.stdout, "best_isa") == "portable"


def test_aarch64_selftest_catches_a_wrong_output(arm_selftest):
    _assert_catches(_run(arm_selftest + ["--self-check-fail", "--quiet"]), "neon")


def test_int8_kernels_compile_for_aarch64():
    """int8_spmm.cpp (a torch operator) compiles for AArch64 with its portable path only (no x86 intrinsics).

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

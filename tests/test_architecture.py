"""The architecture rules bite: the import contracts fail on a wrong import, and files stay small.

The contracts live in pyproject.toml ([tool.importlinter]; docs/architecture.md
explains them). grimp finds a package by walking its folder, so the check runs
on a copy of the package laid out as installed (passes/ as sparsecc/passes, as
the package-dir mapping does), with the copy's own config file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500


def _package_dirs() -> dict[str, Path]:
    """Installed package name -> source folder, from pyproject's package-dir mapping."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {name: ROOT / src for name, src in config["tool"]["setuptools"]["package-dir"].items()}


def _lay_out(dest: Path) -> Path:
    """Copy the package into ``dest`` as installed; return the copy's config file."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.cpp", "*.h")
    for name, src in sorted(_package_dirs().items()):
        target = dest.joinpath(*name.split("."))
        shutil.copytree(src, target, ignore=ignore, dirs_exist_ok=True)
    config = dest / "importlinter.toml"
    shutil.copy(ROOT / "pyproject.toml", config)
    return config


def _lint_imports(tree: Path, config: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("import-linter is not installed (the test extra)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # lint-imports puts its working directory first on sys.path, so `sparsecc` is the copy
    return subprocess.run([str(exe), "--no-cache", "--no-logo", str(config)], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, Path]:
    dest = tmp_path_factory.mktemp("import-tree")
    return dest, _lay_out(dest)


def test_the_package_keeps_its_import_contracts(tree):
    dest, config = tree
    assert (dest / "sparsecc" / "passes" / "insert_masks.py").exists()  # laid out as installed
    run = _lint_imports(dest, config)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_plain_lint_imports_at_the_root_sees_the_installed_layout():
    """sparsecc/<sub> links to each top-level folder of the package-dir mapping, so `lint-imports`
    run by hand at the repository root checks the same package as the install."""
    for name, src in _package_dirs().items():
        if name != "sparsecc":
            link = ROOT.joinpath(*name.split("."))
            assert link.is_symlink() and link.resolve() == src.resolve(), f"{link} should link to {src}"
    run = _lint_imports(ROOT, ROOT / "pyproject.toml")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    config = _lay_out(tmp_path)
    ir = tmp_path / "sparsecc" / "core" / "ir.py"
    ir.write_text(ir.read_text() + "\nfrom sparsecc.flows.compile import compile  # deliberately wrong\n")
    run = _lint_imports(tmp_path, config)
    assert run.returncode != 0
    out = run.stdout
    assert "Stages import only the stages below them BROKEN" in out
    assert "Nothing below the flows imports the flows or the CLI BROKEN" in out
    assert "sparsecc.core.ir -> sparsecc.flows.compile" in out
    assert "Backends stand alone on their shared base" in out and "KEPT" in out


def test_a_backend_importing_another_breaks_the_backend_contract(tmp_path):
    config = _lay_out(tmp_path)
    onnx = tmp_path / "sparsecc" / "backends" / "onnx" / "runtime.py"
    onnx.write_text(onnx.read_text() + "\nimport sparsecc.backends.executorch.runtime  # deliberately wrong\n")
    run = _lint_imports(tmp_path, config)
    assert run.returncode != 0
    assert "Backends stand alone on their shared base (TensorRT builds on the ONNX export) BROKEN" in run.stdout
    assert "sparsecc.backends.onnx.runtime -> sparsecc.backends.executorch.runtime" in run.stdout


def _line_counts() -> dict[str, int]:
    counts = {}
    for src in _package_dirs().values():
        for path in sorted(src.rglob("*.py")):
            if "__pycache__" not in path.parts:
                counts[path.relative_to(ROOT).as_posix()] = len(path.read_text().splitlines())
    return counts


def test_no_package_file_is_over_500_lines():
    counts = _line_counts()
    assert len(counts) > 100  # every package folder was walked
    over = {p: n for p, n in counts.items() if n > MAX_LINES}
    assert not over, f"files over {MAX_LINES} lines (split them along their seams): {over}"


MAX_FUNCTION_LINES = 100


def _long_functions() -> dict[str, int]:
    """``file:function`` -> lines, for every function of the package over the limit
    whose body does not say why (a comment containing "long because")."""
    import ast

    out = {}
    for src in _package_dirs().values():
        for path in src.rglob("*.py"):
            text = path.read_text()
            lines = text.splitlines()
            for node in ast.walk(ast.parse(text)):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                n = node.end_lineno - node.lineno + 1
                body = "\n".join(lines[node.lineno - 1:node.end_lineno])
                if n > MAX_FUNCTION_LINES and "long because" not in body:
                    out[f"{path.relative_to(ROOT)}:{node.name}"] = n
    return out


def test_no_package_function_is_over_100_lines_unless_it_says_why():
    long = _long_functions()
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them, or say why in a comment): {long}"

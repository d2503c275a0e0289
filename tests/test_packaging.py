"""Packaging: every package folder is installed under the sparsecc namespace, nothing global, honest __all__."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Top-level folders and the package each one is installed as.
FOLDERS = {
    "sparsecc": "sparsecc",
    "passes": "sparsecc.passes",
    "backends": "sparsecc.backends",
    "models": "sparsecc.models",
    "recipes": "sparsecc.recipes",  # the named recipes, installed as package data
}
PACKAGE_DIR = {package: folder for folder, package in FOLDERS.items()}


def _setuptools() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def _package_folders() -> dict[str, Path]:
    """Every folder with an __init__.py under the mapped folders, by the package name it must have."""
    found: dict[str, Path] = {}
    for folder, package in FOLDERS.items():
        base = ROOT / folder
        for init in sorted(base.rglob("__init__.py")):
            rel = init.parent.relative_to(base)
            if "__pycache__" in rel.parts:
                continue
            name = ".".join((package, *rel.parts)) if rel.parts else package
            found[name] = init.parent
    return found


def test_package_dir_maps_the_top_level_folders():
    assert _setuptools()["package-dir"] == PACKAGE_DIR


def test_every_package_folder_is_listed():
    listed = set(_setuptools()["packages"])
    folders = _package_folders()
    missing = sorted(set(folders) - listed)
    assert not missing, f"package folders not listed in [tool.setuptools] packages: {missing}"


def test_every_listed_package_is_a_folder():
    mapping = _setuptools()["package-dir"]
    for name in _setuptools()["packages"]:
        head = max((k for k in mapping if name == k or name.startswith(k + ".")), key=len)
        rest = name[len(head):].lstrip(".")
        folder = ROOT / mapping[head] / Path(*rest.split(".")) if rest else ROOT / mapping[head]
        assert folder.is_dir(), f"{name} is listed but {folder} does not exist"


def test_packages_are_not_listed_twice():
    packages = _setuptools()["packages"]
    assert len(packages) == len(set(packages))


# -- the installed distribution ------------------------------------------------------------

PROBE = """
import importlib.util, importlib.metadata, json, sys
out = {"specs": {}}
for name in ("passes", "backends", "models", "recipes", "sparsecc", "sparsecc.passes", "sparsecc.backends",
             "sparsecc.models", "sparsecc.recipes"):
    spec = importlib.util.find_spec(name)
    out["specs"][name] = None if spec is None else list(spec.submodule_search_locations or [spec.origin])
dist = importlib.metadata.distribution("sparsecc")
out["top_level"] = (dist.read_text("top_level.txt") or "").split()
out["files"] = [str(f) for f in dist.files or ()]
json.dump(out, sys.stdout)
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """What an interpreter started outside the repository sees of the installation."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONSAFEPATH")}
    res = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_no_global_passes_backends_models(installed):
    for name in ("passes", "backends", "models"):
        found = installed["specs"][name]
        assert found is None, f"`import {name}` works outside the repository: {found}"


def test_installed_packages_map_to_the_folders(installed):
    for folder, package in FOLDERS.items():
        locations = installed["specs"][package]
        assert locations is not None, f"{package} is not importable"
        assert (ROOT / folder).resolve() in [Path(p).resolve() for p in locations], (package, locations)


def test_distribution_declares_only_sparsecc_at_top_level(installed):
    assert installed["top_level"] in ([], ["sparsecc"]), installed["top_level"]
    for f in installed["files"]:
        first = Path(f).parts[0]
        assert first not in ("passes", "backends", "models"), f"installs a global {first}: {f}"


# -- public API ------------------------------------------------------------------------------


def _public_modules() -> list[str]:
    names = []
    for name in sorted(_package_folders()):
        names.append(name)
        folder = _package_folders()[name]
        for info in pkgutil.iter_modules([str(folder)]):
            if not info.ispkg and not info.name.startswith("_"):
                names.append(f"{name}.{info.name}")
    return names


OPTIONAL = ("onnx", "onnxruntime", "onnxscript", "onnx_graphsurgeon", "executorch", "tensorrt", "transformers")


@pytest.mark.parametrize("module", _public_modules())
def test_all_names_exist(module):
    try:
        mod = importlib.import_module(module)
    except ImportError as e:  # an optional dependency that is not installed
        if e.name and e.name.split(".")[0] in OPTIONAL:
            pytest.skip(f"{module} needs {e.name}")
        raise
    exported = getattr(mod, "__all__", None)
    assert exported is not None, f"{module} has no __all__"
    assert len(exported) == len(set(exported)), f"{module}.__all__ lists a name twice"
    missing = [n for n in exported if not hasattr(mod, n)]
    assert not missing, f"{module}.__all__ names missing attributes: {missing}"


def test_top_level_api():
    import sparsecc

    assert sparsecc.__version__ == _project_version()
    for name in ("capture", "sparsify", "load_recipe", "save_program", "load_program", "PassManager"):
        assert name in sparsecc.__all__


def _project_version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def test_console_script_entry_point():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "sparsecc"]
    assert ep.value == "sparsecc.cli:main"
    assert callable(ep.load())


def test_named_recipes_ship_with_the_package(installed):
    """`-r 2of4` works from any folder: every recipes/*.yaml is package data of sparsecc.recipes."""
    from sparsecc.recipes import builtin_recipe, builtin_recipes

    shipped = {p.name for p in (ROOT / "recipes").glob("*.yaml")}
    assert shipped and set(f"{n}.yaml" for n in builtin_recipes()) == shipped
    assert builtin_recipe("2of4") == builtin_recipe("2of4.yaml") == ROOT / "recipes" / "2of4.yaml"
    assert builtin_recipe("no-such-recipe") is None
    assert _setuptools()["package-data"]["sparsecc.recipes"] == ["*.yaml"]
    assert installed["specs"]["recipes"] is None  # nothing global named recipes

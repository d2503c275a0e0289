"""Fixtures for the TensorRT tests: the recorded-format samples and one compiled resnet bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def resnet_expected() -> dict:
    """expected_sparse_layers.json of the 2:4 resnet bundle (4 layers 2:4, 5 dense)."""
    return json.loads((FIXTURES / "resnet_expected_sparse_layers.json").read_text())


@pytest.fixture(scope="session")
def resnet_bundle(tmp_path_factory: pytest.TempPathFactory, zoo) -> Path:
    """The zoo resnet, 2:4 by recipes/2of4.yaml, compiled to --target tensorrt-bundle once."""
    from sparsecc.flows.compile import compile

    spec, program = zoo("resnet")
    out = tmp_path_factory.mktemp("trt") / "resnet"
    root = Path(__file__).resolve().parents[3]
    compile(spec, root / "recipes" / "2of4.yaml", out, targets=["tensorrt-bundle"], program=program,
            dense_reference=False)
    return out

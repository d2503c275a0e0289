"""Shared fixtures. Capturing a model is the slowest step of most tests, so
each zoo model is built and captured once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

_CAPTURED: dict = {}


def captured_zoo_model(name: str):
    """(ModelSpec, ExportedProgram) of a zoo model, built and captured once."""
    if name not in _CAPTURED:
        from sparsecc import capture
        from sparsecc.models import get_model

        spec = get_model(name)
        _CAPTURED[name] = (spec, capture(spec.model, spec.example_args, spec.example_kwargs, spec.dynamic_shapes))
    return _CAPTURED[name]


_REAL_MODELS = ("smollm2", "minilm", "efficientnet-lite0", "mnist")


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (--dist loadgroup), keep the tests of one real model on one
    worker, so that its slow load and capture happen once."""
    for item in items:
        for name in _REAL_MODELS:
            if name in item.nodeid:
                item.add_marker(pytest.mark.xdist_group(name))
                break


@pytest.fixture(scope="session")
def zoo():
    """``zoo(name) -> (spec, program)``: the zoo model and its captured program, cached."""
    return captured_zoo_model

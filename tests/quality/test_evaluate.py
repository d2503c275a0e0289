"""sparsecc.evaluate: metrics against independent computations, the perplexity protocol on a
model whose answer is known, input fitting, features, and the real models (slow)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sparsecc
import sparsecc.data as ds
from sparsecc.quality import evaluate as ev
from sparsecc.cli import app
from sparsecc.models import ModelSpec



def _need(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ds.DataUnavailableError as e:
        pytest.skip(f"data not available here: {e}")


class WordTokenizer:
    """A whitespace tokenizer with the slice of the transformers API the LM windows use;
    words share 512 ids, which keeps the bigram model below small."""

    name_or_path = "words-512"
    VOCAB = 512

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __len__(self):
        return self.VOCAB

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [self.vocab.setdefault(w, len(self.vocab)) % self.VOCAB for w in text.split()]}


# -- metrics -------------------------------------------------------------------------------


def test_pearson_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = 0.3 * x + rng.normal(size=200)
    assert ev.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)


def test_spearman_with_ties_matches_hand_ranks():
    x = np.array([1.0, 2.0, 2.0, 3.0, 5.0])
    y = np.array([1.0, 3.0, 2.0, 4.0, 4.0])
    rx = np.array([1, 2.5, 2.5, 4, 5])  # ties share the mean rank
    ry = np.array([1, 3, 2, 4.5, 4.5])
    d = (rx - rx.mean()) @ (ry - ry.mean()) / math.sqrt(((rx - rx.mean()) ** 2).sum() * ((ry - ry.mean()) ** 2).sum())
    assert ev.spearman(x, y) == pytest.approx(d, rel=1e-12)
    # without ties: the classic 1 - 6 sum d^2 / (n (n^2 - 1))
    a, b = np.array([3.0, 1.0, 4.0, 1.5, 5.0, 9.0]), np.array([2.0, 7.0, 1.0, 8.0, 2.5, 8.5])
    ra, rb = a.argsort().argsort() + 1, b.argsort().argsort() + 1
    n = len(a)
    assert ev.spearman(a, b) == pytest.approx(1 - 6 * ((ra - rb) ** 2).sum() / (n * (n * n - 1)), rel=1e-12)


def test_agreement_and_kl_on_crafted_logits():
    ref = torch.tensor([[5.0, 1.0, 0.0, 0.0, 0.0, 0.0],
                        [0.0, 5.0, 1.0, 0.0, 0.0, 0.0],
                        [0.0, 0.0, 0.0, 0.0, 0.0, 5.0]])
    got = torch.tensor([[4.0, 1.0, 0.0, 0.0, 0.0, 0.0],    # same top-1
                        [0.0, 1.0, 5.0, 0.0, 0.0, 0.0],    # ref's class 2nd
                        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])   # ref's class 6th: outside the top 5
    assert ev.top_k_agreement(got, ref, 1) == pytest.approx(1 / 3)
    assert ev.top_k_agreement(got, ref, 5) == pytest.approx(2 / 3)
    assert ev.top_k_agreement(ref, ref, 1) == 1.0
    assert ev.mean_kl(ref, ref) == pytest.approx(0.0, abs=1e-12)
    p, q = torch.softmax(ref.double(), -1), torch.softmax(got.double(), -1)
    want = float(sum((p[i] * (p[i] / q[i]).log()).sum() for i in range(3)) / 3)
    assert ev.mean_kl(got, ref) == pytest.approx(want, rel=1e-10)


def test_photo_agreement_on_the_views_the_dense_model_is_sure_of():
    pad = torch.zeros(3, 3)
    ref = torch.cat([torch.tensor([[5.0, 0.0, 0.0],     # sure (p > 0.5)
                                   [1.0, 0.9, 0.8],     # unsure: a near tie
                                   [0.0, 0.0, 4.0]]), pad], 1)  # sure
    got = torch.cat([torch.tensor([[4.0, 0.0, 0.0],     # agrees
                                   [0.8, 0.9, 1.0],     # the tie swaps
                                   [0.0, 4.0, 0.0]]), pad], 1)  # a real flip
    metrics, details = ev._score_photos({"views": ["v"] * 3, "logits": got}, {"logits": ref}, None)
    assert details["dense_sure_views"] == 2
    assert metrics["top1_agreement"] == pytest.approx(1 / 3)
    assert metrics["top1_agreement_sure"] == pytest.approx(1 / 2)
    unsure = torch.zeros(3, 6)
    metrics, details = ev._score_photos({"views": ["v"] * 3, "logits": got}, {"logits": unsure}, None)
    assert details["dense_sure_views"] == 0 and "top1_agreement_sure" not in metrics


def test_ridge_probe_matches_sklearn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(4, 12)) * 2
    y = rng.integers(0, 4, 300)
    x = centers[y] + rng.normal(size=(300, 12)) * 3
    tx, ty, vx, vy = x[:200], y[:200], x[200:], y[200:]
    acc = ev.ridge_probe_accuracy(tx, ty, vx, vy, lam=20.0, classes=4)
    mu, sd = tx.mean(0), tx.std(0) + 1e-6
    model = sklearn.Ridge(alpha=20.0).fit((tx - mu) / sd, np.eye(4)[ty])
    want = float((model.predict((vx - mu) / sd).argmax(1) == vy).mean())
    assert acc == want and acc > 0.5  # separable enough to beat chance (0.25) by far


def test_perplexity_from_nll():
    logits = torch.randn(3, 10, 7, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 7, (3, 10), generator=torch.Generator().manual_seed(1))
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1), reduction="sum")
    want = math.exp(float(nll) / 30)
    assert ev.perplexity_from_nll(float(nll), 30) == pytest.approx(want, rel=1e-12)
    with pytest.raises(ev.EvalError, match="no tokens"):
        ev.perplexity_from_nll(0.0, 0)


# -- the perplexity protocol on a bigram model -----------------------------------------------


class Bigram(torch.nn.Module):
    """logits[t] = table[ids[t]]: the answer depends only on the previous token."""

    def __init__(self, vocab: int):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0)))

    def forward(self, input_ids, attention_mask=None):
        return {"logits": self.table[input_ids]}


@pytest.fixture(scope="module")
def bigram_spec():
    tok = WordTokenizer()
    _need(ds.lm_tokens, tok, "evaluation")
    model = Bigram(len(tok)).eval()
    ids = torch.zeros(1, 4, dtype=torch.long)
    return ModelSpec("bigram", model, (), {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                     task="causal-lm", extras={"tokenizer": tok})


def _bigram_ppl(spec, tokens: list[int]) -> tuple[float, int]:
    t = torch.tensor(tokens)
    lp = torch.log_softmax(spec.model.table.detach().double()[t[:-1]], -1)
    nll = -lp.gather(-1, t[1:, None]).sum()
    return math.exp(float(nll) / (len(t) - 1)), len(t) - 1


@pytest.mark.parametrize("stride", [32, 50])
def test_perplexity_protocol_overlapping_windows_score_each_token_once(bigram_spec, stride):
    """With stride < window, every token after the first is scored exactly once; a bigram
    model's NLL does not depend on the longer context, so the result equals the bigram
    perplexity of the contiguous stretch the windows cover."""
    opts = ev.EvalOptions(window=64, stride=stride, max_windows=6)
    r = ev.evaluate(bigram_spec.model, "perplexity", model=bigram_spec, reference=None, options=opts)
    covered = ds.lm_tokens(bigram_spec.extras["tokenizer"], "evaluation")[: 64 + 5 * stride]
    want, tokens = _bigram_ppl(bigram_spec, covered)
    assert r.details["tokens"] == tokens
    assert r.metrics["perplexity"] == pytest.approx(want, rel=1e-9)


def test_perplexity_protocol_default_windows(bigram_spec):
    opts = ev.EvalOptions(window=64, max_windows=5, batch_size=2)
    assert "dense_perplexity" not in ev.evaluate(bigram_spec.model, "perplexity", model=bigram_spec,
                                                 options=opts).metrics  # a second pass only when asked for
    r = ev.evaluate(bigram_spec.model, "perplexity", model=bigram_spec, reference=bigram_spec.model, options=opts)
    ev_tokens = ds.lm_tokens(bigram_spec.extras["tokenizer"], "evaluation")
    nll, n = 0.0, 0
    for k in range(5):  # non-overlapping: each window scores its own tokens 2..64
        p, c = _bigram_ppl(bigram_spec, ev_tokens[64 * k : 64 * (k + 1)])
        nll += math.log(p) * c
        n += c
    assert r.details["tokens"] == n == 5 * 63
    assert r.metrics["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-9)
    assert r.metrics["dense_perplexity"] == pytest.approx(r.metrics["perplexity"], rel=1e-12)


# -- fitting inputs, features, tasks ------------------------------------------------------------


def test_forward_pads_small_batches_and_rejects_what_does_not_fit():
    seen = []

    def call(args, kwargs):
        seen.append(kwargs["input_ids"].shape)
        return [kwargs["input_ids"].float() * 2]

    fwd = ev._Forward("onnx", call, batch_range=(2, 4), seq_range=(2, 8))
    ids = torch.tensor([[1, 2, 3]])
    out = fwd((), {"input_ids": ids})
    assert seen[-1] == (2, 3) and torch.equal(out[0], ids.float() * 2)  # padded to 2, cut back to 1
    assert fwd.max_batch(16) == 4
    with pytest.raises(ev.EvalError, match=r"batch 5 is above the model's batch range \[2, 4\]"):
        fwd((), {"input_ids": torch.ones(5, 3, dtype=torch.long)})
    with pytest.raises(ev.EvalError, match=r"a sequence of 9 tokens is outside the model's seq range \[2, 8\]"):
        fwd((), {"input_ids": torch.ones(2, 9, dtype=torch.long)})


def test_program_features_are_the_classifier_input():
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten())
    model = torch.nn.Sequential(body, torch.nn.Linear(8, 5)).eval()
    x = torch.randn(2, 3, 16, 16)
    program = sparsecc.capture(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=8)},))
    fwd = ev._torch_forward(program)
    assert fwd.batch_range == (1, 8)
    torch.testing.assert_close(fwd.features((x,), {}), body(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ev._torch_forward(model).features((x,), {}), body(x), rtol=0, atol=0)
    torch.testing.assert_close(fwd((x,), {})[0], model(x), rtol=1e-5, atol=1e-6)


def test_tasks_refuse_models_they_do_not_fit():
    from sparsecc.models import get_model

    spec = get_model("mlp")
    assert ev.default_tasks(spec) == []
    with pytest.raises(ev.EvalError, match="does not fit model 'mlp'"):
        ev.evaluate(spec.model, "perplexity", model=spec)
    with pytest.raises(ev.EvalError, match="unknown task 'bleu'"):
        ev.evaluate(spec.model, "bleu", model=spec)


def test_cli_eval_rejects_backend_for_a_model():
    res = CliRunner().invoke(app, ["eval", "mlp", "--backend", "onnx"], env={"COLUMNS": "300"})
    assert res.exit_code == 2  # a usage error
    assert "apply to a bundle folder" in " ".join(res.output.split())


# -- real models (slow) ----------------------------------------------------------------------------


@pytest.mark.slow
def test_mnist_digit_accuracy_dense_and_pruned(zoo):
    spec, program = zoo("mnist")
    opts = ev.EvalOptions(max_digits=1500)
    dense = _need(ev.evaluate, program, "digit-accuracy", model=spec, options=opts)
    assert dense.metrics["accuracy"] == dense.metrics["dense_accuracy"] > 0.97
    assert dense.metrics["top1_agreement"] == 1.0 and dense.details["digits"] == 1500
    sparse = sparsecc.sparsify(program, {"pattern": "unstructured", "sparsity": 0.9}, fold=True).program
    pruned = ev.evaluate(sparse, "digit-accuracy", model=spec, options=opts)
    assert pruned.metrics["dense_accuracy"] == dense.metrics["accuracy"]
    assert pruned.metrics["top1_agreement"] < 1.0  # 90% of the weights gone changes some answers


@pytest.mark.slow
def test_minilm_lee_similarity(zoo):
    spec, program = zoo("minilm")
    r = _need(ev.evaluate, program, "lee-similarity", model=spec)
    assert r.details["pairs"] == 1225
    assert 0.4 < r.metrics["spearman"] < 0.8 and 0.5 < r.metrics["pearson"] < 0.8
    assert r.metrics["cosine_to_dense"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_efficientnet_photos_and_probe(zoo):
    spec, program = zoo("efficientnet-lite0")
    r = _need(ev.evaluate, program, "photo-agreement", model=spec)
    assert r.details["images"] == 8 * len(ds.EVALUATION_PHOTOS)
    assert r.metrics["top1_agreement"] == 1.0 and r.metrics["kl_to_dense"] < 1e-8
    assert 0 < r.details["dense_sure_views"] < r.details["images"] and r.metrics["top1_agreement_sure"] == 1.0
    opts = ev.EvalOptions(probe_train=300, probe_test=200)
    probe = _need(ev.evaluate, program, "fashion-probe", model=spec, options=opts)
    assert probe.details["features"] == 1280
    assert probe.metrics["probe_accuracy"] == probe.metrics["dense_probe_accuracy"] > 0.6


@pytest.mark.slow
def test_smollm2_perplexity(zoo):
    spec, program = zoo("smollm2")
    r = _need(ev.evaluate, program, "perplexity", model=spec, reference=None,
              options=ev.EvalOptions(max_windows=4))
    assert r.details["tokens"] == 4 * 255
    assert 10 < r.metrics["perplexity"] < 60  # about 30 on the whole evaluation half


@pytest.mark.slow
def test_bundle_eval_onnx_and_executorch_agree_with_the_program(zoo, tmp_path):
    from sparsecc.flows.compile import compile as run_compile

    spec, program = zoo("mnist")
    run_compile(spec, {"pattern": "2:4", "layers": {"min_params": 4096}}, tmp_path / "b", program=program)
    opts = ev.EvalOptions(max_digits=600)
    results = _need(ev.evaluate_bundle, tmp_path / "b", "digit-accuracy", model=spec, options=opts)
    got = {(r.runner, r.variant): r for r in results}
    assert set(got) == {(b, v) for b in ("onnx", "executorch", "torch") for v in ("dense", "sparse")}
    torch_sparse = got["torch", "sparse"]
    for backend in ("onnx", "executorch"):
        assert got[backend, "sparse"].metrics["accuracy"] == torch_sparse.metrics["accuracy"]
        assert got[backend, "sparse"].metrics["top1_agreement"] == torch_sparse.metrics["top1_agreement"]
        assert got[backend, "dense"].metrics["accuracy"] == got["torch", "dense"].metrics["accuracy"]

"""sparsecc.data.prose: the Wikipedia prose is clean, and no training text is evaluation text."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

from sparsecc.data import DataUnavailableError, lee_background_text, lee_documents, lm_tokens
from sparsecc.data import prose


def _need(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except DataUnavailableError as e:
        pytest.skip(f"data not available here: {e}")


class WordTokenizer:
    """Whitespace tokens, with the slice of the transformers API the data functions use."""

    name_or_path = "words"

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __len__(self):
        return len(self.vocab)

    def __call__(self, text, add_special_tokens=True, padding=False, truncation=False, max_length=None,
                 return_tensors=None):
        if isinstance(text, str):
            return {"input_ids": [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]}
        rows = [[self.vocab.setdefault(w, len(self.vocab)) for w in t.split()][:max_length] for t in text]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def text():
    return _need(prose.training_text)


def _sentences(s: str, min_words: int = 8) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+", s)
    return [p.strip() for p in parts if len(p.split()) >= min_words]


def test_wikipedia_prose_is_large_and_free_of_markup():
    articles = _need(prose.wiki_articles)
    words = sum(len(body.split()) for _, body in articles)
    assert len(articles) >= 90 and words >= 300_000
    assert {"Anarchism", "Aristotle", "Albert Einstein"} <= {t for t, _ in articles}
    body = prose.wiki_text()
    for leftover in ("[[", "]]", "{{", "}}", "<ref", "'''", "&lt;", "http://"):
        assert leftover not in body, leftover


def test_training_text_contains_no_evaluation_text(text):
    full = lee_background_text()
    evaluation = full[len(full) // 2:]  # the perplexity split is the second half of the tokens
    checked = 0
    for sentence in _sentences(evaluation) + [s for d in lee_documents() for s in _sentences(d)]:
        assert sentence not in text, sentence[:80]
        checked += 1
    assert checked > 1000
    # the Lee part is whole documents ending before 45% of the file
    lee_part = prose.lee_training_text()
    assert lee_part and text.endswith(lee_part)
    assert full.index(lee_part.splitlines()[-1]) + len(lee_part.splitlines()[-1]) < 0.45 * len(full)


def test_lm_training_windows_use_only_calibration_tokens(text):
    tok = WordTokenizer()
    spec = SimpleNamespace(name="lm", task="causal-lm", extras={"tokenizer": tok},
                           example_kwargs={"input_ids": None, "attention_mask": None})
    batches = prose.training_inputs(spec, "prose", samples=50, seq_len=64, seed=3)
    assert len(batches) == 50
    for args, kw in batches:
        assert args == () and kw["input_ids"].shape == (1, 64) and bool((kw["attention_mask"] == 1).all())
    evaluation = set(map(tuple, torch.tensor(lm_tokens(tok, "evaluation")).unfold(0, 16, 16).tolist()))
    for _, kw in batches:  # no 16-token run of the evaluation split appears in a window
        windows = kw["input_ids"][0].unfold(0, 16, 1).tolist()
        assert not any(tuple(w) in evaluation for w in windows)
    again = prose.training_inputs(spec, "prose", samples=50, seq_len=64, seed=3)
    assert all(torch.equal(a[1]["input_ids"], b[1]["input_ids"]) for a, b in zip(batches, again))


def test_sentence_batches_for_encoders_and_clear_errors(text):
    spec = SimpleNamespace(name="enc", task="feature-extraction", extras={"tokenizer": WordTokenizer()},
                           example_kwargs={"input_ids": None, "attention_mask": None})
    batches = prose.training_inputs(spec, "wiki", samples=32, batch_size=8, seq_len=20)
    assert len(batches) == 4
    for _, kw in batches:
        assert kw["input_ids"].shape[0] == 8 and kw["input_ids"].shape[1] <= 20
    with pytest.raises(ValueError, match="unknown training data 'news'"):
        prose.training_inputs(spec, "news", samples=8)
    image = SimpleNamespace(name="cnn", task="image-classification", extras={})
    with pytest.raises(ValueError, match="takes no tokenized text"):
        prose.training_inputs(image, "prose", samples=8)


def test_paragraph_batches_are_whole_paragraphs_grouped_by_length(text):
    spec = SimpleNamespace(name="enc", task="feature-extraction", extras={"tokenizer": WordTokenizer()},
                           example_kwargs={"input_ids": None, "attention_mask": None})
    paragraphs = prose.training_paragraphs()
    assert len(paragraphs) > 4000 and paragraphs[-1] == prose.lee_training_text().splitlines()[-1]
    n = len(paragraphs) // 8 + 10  # more batches than paragraphs: a second round, in a new order
    batches = prose.training_inputs(spec, "paragraphs", samples=8 * n, batch_size=8, seq_len=300)
    assert len(batches) == n
    tokens = [kw["attention_mask"].sum(1) for _, kw in batches]
    assert max(int(kw["input_ids"].shape[1]) for _, kw in batches) == 300  # truncated to seq_len
    real = sum(int(t.sum()) for t in tokens)
    padded = sum(int(kw["input_ids"].numel()) for _, kw in batches)
    assert real > 0.8 * padded  # grouped by length: little padding (in random batches it is about half)
    first = {tuple(kw["input_ids"][i, :12].tolist()) for _, kw in batches[:40] for i in range(8)}
    again = prose.training_inputs(spec, "paragraphs", samples=8 * n, batch_size=8, seq_len=300)
    assert first == {tuple(kw["input_ids"][i, :12].tolist()) for _, kw in again[:40] for i in range(8)}
    lm = SimpleNamespace(name="lm", task="causal-lm", extras={"tokenizer": WordTokenizer()},
                         example_kwargs={"input_ids": None})
    windows = prose.training_inputs(lm, "paragraphs", samples=4, seq_len=32, seed=1)
    same = prose.training_inputs(lm, "prose", samples=4, seq_len=32, seed=1)
    assert all(torch.equal(a[1]["input_ids"], b[1]["input_ids"]) for a, b in zip(windows, same))


def test_noised_paragraphs_differ_each_time_round_and_keep_the_corpus_words(monkeypatch):
    texts = [f"paragraph {i} holds words alpha beta gamma delta" for i in range(6)]
    g = torch.Generator().manual_seed(0)
    assert prose.noised(texts, 0.0, g) == texts
    vocab = {w for t in texts for w in t.split()}
    everything = prose.noised(texts, 1.0, torch.Generator().manual_seed(1))
    assert all(len(t.split()) == len(o.split()) for t, o in zip(texts, everything))
    assert {w for t in everything for w in t.split()} <= vocab and everything != texts
    monkeypatch.setattr(prose, "training_paragraphs", lambda: texts)
    spec = SimpleNamespace(name="enc", task="feature-extraction", extras={"tokenizer": WordTokenizer()},
                           example_kwargs={"input_ids": None, "attention_mask": None})
    batches = prose.training_inputs(spec, "noised-paragraphs", samples=24, batch_size=2, seq_len=64, seed=2)
    vocab_of = {v: k for k, v in spec.extras["tokenizer"].vocab.items()}
    seen = [" ".join(vocab_of[int(i)] for i in row) for _, kw in batches for row in kw["input_ids"]]
    assert len(seen) == 24 and len(set(seen)) > 12  # four rounds of six paragraphs, rarely the same twice
    changed = sum(a != b for s in seen for a, b in zip(s.split(), min(texts, key=lambda t: sum(
        x != y for x, y in zip(t.split(), s.split()))).split()))
    assert 0.05 < changed / sum(len(s.split()) for s in seen) < 0.3  # about NOISE_RATE of the words
    again = prose.training_inputs(spec, "noised-paragraphs", samples=24, batch_size=2, seq_len=64, seed=2)
    assert all(torch.equal(a[1]["input_ids"], b[1]["input_ids"]) for a, b in zip(batches, again))
    lm = SimpleNamespace(name="lm", task="causal-lm", extras={"tokenizer": WordTokenizer()}, example_kwargs={})
    with pytest.raises(ValueError, match="'noised-paragraphs' is for sentence encoders"):
        prose.training_inputs(lm, "noised-paragraphs", samples=4, seq_len=16)


def test_cropped_paragraphs_are_runs_of_the_paragraphs_new_each_time_round(monkeypatch):
    texts = [" ".join(f"w{i}_{j}" for j in range(40 + 10 * i)) for i in range(4)] + ["a short one"]
    crops = prose.cropped(texts * 3, torch.Generator().manual_seed(0), min_words=5)
    for crop, text in zip(crops, texts * 3):
        words = crop.split()
        assert 5 <= len(words) or text == "a short one"
        assert f" {crop} " in f" {text} "  # a contiguous run of the paragraph's own words
    assert crops[-1] == "a short one"  # shorter than min_words: whole
    assert len(set(crops[:4] + crops[5:9])) == 8  # the second time round, other crops
    monkeypatch.setattr(prose, "training_paragraphs", lambda: texts)
    spec = SimpleNamespace(name="enc", task="feature-extraction", extras={"tokenizer": WordTokenizer()},
                           example_kwargs={"input_ids": None, "attention_mask": None})
    batches = prose.training_inputs(spec, "cropped-paragraphs", samples=20, batch_size=5, seq_len=200, seed=1)
    again = prose.training_inputs(spec, "cropped-paragraphs", samples=20, batch_size=5, seq_len=200, seed=1)
    assert len(batches) == 4 and all(torch.equal(a[1]["input_ids"], b[1]["input_ids"]) for a, b in zip(batches, again))
    lengths = [int(n) for _, kw in batches for n in kw["attention_mask"].sum(1)]
    assert min(lengths) < 40 < max(lengths) <= 70  # shorter than the paragraphs, up to the longest

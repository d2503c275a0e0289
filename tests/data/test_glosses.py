"""sparsecc.data.glosses: WordNet synsets become clean paragraph-length prose, disjoint from evaluation text."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sparsecc.data import DataUnavailableError, lee_documents
from sparsecc.data import glosses, prose

from tests.data.test_prose import WordTokenizer

# two noun synsets of one lexicographer file (03), one of another (04), an adjective with a syntax marker
_DATA = """\
  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
00015388 03 n 02 animal 0 beast 0 002 @ 00004475 n 0000 ~ 01318894 n 0000 | a living organism characterized by voluntary movement  
00017222 03 n 01 plant 0 001 @ 00004475 n 0000 | (botany) a living organism lacking the power of locomotion; "plants take in carbon dioxide"  
00021939 04 n 03 artifact 0 artefact 0 Artifact 1 001 @ 00002684 n 0000 | a man-made object taken as a whole  
01380638 00 a 01 long(a) 0 000 | primarily temporal sense; being or indicating a relatively great duration!  
"""


def test_a_synset_line_becomes_one_sentence_and_the_header_none():
    lines = _DATA.splitlines()
    assert glosses.parse_synset(lines[0]) is None
    assert glosses.parse_synset(lines[2]) == ("03", "Animal (beast): a living organism characterized by "
                                                    "voluntary movement.")
    assert glosses.parse_synset(lines[3]) == ("03", 'Plant: (botany) a living organism lacking the power of '
                                                    'locomotion; "plants take in carbon dioxide".')
    assert glosses.parse_synset(lines[5])[1].startswith("Long: primarily temporal sense")  # "(a)" dropped
    assert glosses.parse_synset(lines[5])[1].endswith("duration!")
    with pytest.raises(ValueError, match="not a WordNet synset line"):
        glosses.parse_synset("0001 03 | a gloss")


@pytest.fixture
def small_glosses(monkeypatch, tmp_path):
    path = tmp_path / "glosses.txt"
    rows = [glosses.parse_synset(line) for line in _DATA.splitlines()]
    path.write_text("".join(f"noun.{t}\t{s}\n" for t, s in filter(None, rows)))
    monkeypatch.setenv("SPARSECC_GLOSSES", str(path))
    glosses._gloss_lines.cache_clear()
    yield path
    glosses._gloss_lines.cache_clear()


def test_paragraphs_join_synsets_of_one_topic_up_to_the_word_budget(small_glosses):
    assert len(glosses.gloss_sentences()) == 4
    big = glosses.gloss_paragraphs(words=1000)  # one text per lexicographer file
    assert len(big) == 3 and big[0].startswith("Animal (beast):") and "Plant:" in big[0]
    assert big[1].startswith("Artifact (artefact):")
    small = glosses.gloss_paragraphs(words=5)  # each synset passes 5 words alone
    assert small == glosses.gloss_sentences()


def test_sources_joined_by_plus_give_equal_shares_shuffled_and_seeded(small_glosses, monkeypatch):
    monkeypatch.setattr(prose, "training_paragraphs", lambda: [f"wiki paragraph number {i} ." for i in range(40)])
    spec = SimpleNamespace(name="enc", task="feature-extraction", extras={"tokenizer": WordTokenizer()},
                           example_kwargs={"input_ids": None, "attention_mask": None})
    mixed = prose.training_inputs(spec, "paragraphs+glosses", samples=32, batch_size=4, seq_len=64, seed=5)
    assert len(mixed) == 8
    vocab = {v: k for k, v in spec.extras["tokenizer"].vocab.items()}
    firsts = [vocab[int(kw["input_ids"][0, 0])] for _, kw in mixed]
    assert firsts.count("wiki") == 4 and len(firsts) - firsts.count("wiki") == 4
    assert firsts != sorted(firsts, key=lambda w: w != "wiki")  # interleaved, not one source then the other
    again = prose.training_inputs(spec, "paragraphs+glosses", samples=32, batch_size=4, seq_len=64, seed=5)
    assert all(torch.equal(a[1]["input_ids"], b[1]["input_ids"]) for a, b in zip(mixed, again))
    with pytest.raises(ValueError, match="unknown training data 'news'.*joined by '\\+'"):
        prose.training_inputs(spec, "paragraphs+news", samples=8)


def test_the_real_glosses_are_large_clean_and_not_evaluation_text():
    glosses._gloss_lines.cache_clear()
    try:
        sentences = glosses.gloss_sentences()
    except DataUnavailableError as e:
        pytest.skip(f"data not available here: {e}")
    assert len(sentences) > 110_000 and sum(len(s.split()) for s in sentences) > 1_400_000
    paragraphs = glosses.gloss_paragraphs()
    assert 60 <= sum(len(p.split()) for p in paragraphs) / len(paragraphs) <= 140
    text = "\n".join(sentences)
    for doc in lee_documents():  # no evaluation document's sentence (of 8+ words) is a gloss
        for sentence in (s.strip() for s in doc.split(". ") if len(s.split()) >= 8):
            assert sentence not in text, sentence[:80]



def test_language_model_windows_of_glosses_hold_only_gloss_words(small_glosses):
    tok = WordTokenizer()
    lm = SimpleNamespace(name="lm", task="causal-lm", extras={"tokenizer": tok}, example_kwargs={"input_ids": None})
    windows = prose.training_inputs(lm, "glosses", samples=3, seq_len=8, seed=0)
    words = {w for p in glosses.gloss_paragraphs() for w in p.split()}
    vocab = {v: k for k, v in tok.vocab.items()}
    assert len(windows) == 3 and all(kw["input_ids"].shape == (1, 8) for _, kw in windows)
    assert {vocab[int(i)] for _, kw in windows for i in kw["input_ids"][0]} <= words

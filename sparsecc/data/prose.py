"""English prose for recovery training, disjoint from every evaluation text.

Sources
-------

- **Wikipedia articles** from the ``gensim==4.4.0`` wheel (PyPI; the same wheel
  the Lee corpus comes from, fetched with ``pip download --no-deps``; gensim is
  never installed): ``gensim/test/test_data/enwiki-latest-pages-articles1.xml-
  p000000010p000030302-shortened.bz2``, 1.7 MB compressed, 6.1 MB of MediaWiki
  XML: 206 pages of an April 2016 English Wikipedia dump (Anarchism, Autism,
  Albedo, Aristotle, ...), 100 of them redirects. Text licence: CC BY-SA 3.0
  (Wikipedia's; attribution: the Wikipedia contributors of each article); the
  wheel itself is LGPL-2.1. `wiki_articles` strips the markup (templates,
  tables, references, links, files, headings, lists) and keeps paragraphs of
  at least 12 words that end a sentence: 100 articles, 2.4 MB, 381k
  words of encyclopedic prose.
- **The first half of** ``lee_background.cor`` (news, same wheel; see
  `sparsecc.data.lee_background_text`): only whole documents that end before
  45% of the file's characters, so that no text of the language-model
  evaluation split (the second half of the *tokens*, for any tokenizer that
  spends tokens about evenly) is ever trained on. `lee_training_text` says which.

`training_text` joins both (Wikipedia first). `training_inputs(spec, "prose",
...)` turns it into batches a zoo model takes (``sparsecc.flows.recover`` calls
it for ``recovery: {data: prose}``): language models get seeded random
windows of the token stream (for the Lee part exactly the tokens of
`sparsecc.data.lm_tokens`' calibration split), sentence encoders batches of
its sentences. ``"wiki"`` gives the Wikipedia part alone. ``"paragraphs"`` is
``"prose"`` cut into whole paragraphs instead of sentences (Wikipedia
paragraphs, then the calibration Lee documents), truncated to 256 tokens: a
sentence encoder evaluated on documents (the Lee similarity protocol embeds
whole documents of 60-100 words) is trained on text of that length; for
language models it is the same token stream as ``"prose"``.

Nothing here overlaps the evaluation data: ``lee.cor`` (embedding
similarity) and the second half of ``lee_background`` (perplexity) share no
sentence with `training_text` (tests/data/test_prose.py checks it).

Cache: the bz2 file and the cleaned text under ``data_dir()/prose/``;
``python -m sparsecc.data fetch`` (part of ``make data``) fills it.
"""

from __future__ import annotations

import bz2
import importlib.util
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any

from sparsecc.data.cache import DataUnavailableError, atomic_write, data_dir
from sparsecc.data.glosses import gloss_paragraphs
from sparsecc.data.lee import lee_background_sentences, lee_background_text, lm_tokens

__all__ = ["WIKI_MEMBER", "wiki_articles", "wiki_text", "lee_training_text", "training_text",
           "training_sentences", "training_paragraphs", "training_inputs", "fetch_prose", "noised", "cropped",
           "PROSE_SOURCES", "NOISE_RATE", "CROP_MIN_WORDS"]

GENSIM_WHEEL = "gensim==4.4.0"
WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
PROSE_SOURCES = ("prose", "wiki", "paragraphs", "glosses", "noised-paragraphs", "cropped-paragraphs")
NOISE_RATE = 0.15  # of the words of a noised paragraph replaced by a random word of the corpus
CROP_MIN_WORDS = 20  # the shortest crop of a cropped paragraph
LEE_FRACTION = 0.45  # Lee documents must end before this fraction of the file's characters
_CLEAN_VERSION = 1


def _prose_dir() -> Path:
    return data_dir() / "prose"


def fetch_prose() -> Path:
    """The Wikipedia bz2 file in the cache: from an installed gensim, else from ``pip download`` of its wheel."""
    out = _prose_dir() / Path(WIKI_MEMBER).name
    if out.is_file():
        return out
    spec = importlib.util.find_spec("gensim")
    if spec is not None and spec.submodule_search_locations:
        local = Path(list(spec.submodule_search_locations)[0]).parent / WIKI_MEMBER
        if local.is_file():
            atomic_write(out, local.read_bytes())
            return out
    with tempfile.TemporaryDirectory(prefix="sparsecc-prose-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", GENSIM_WHEEL, "-d", tmp]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
        except (subprocess.SubprocessError, OSError) as e:
            detail = getattr(e, "stderr", "") or str(e)
            raise DataUnavailableError(f"prose: `{' '.join(cmd)}` failed ({detail.strip()[-300:]}); "
                                       "run `make data` where PyPI is reachable") from e
        wheels = sorted(Path(tmp).glob("gensim-*.whl"))
        if not wheels:
            raise DataUnavailableError(f"prose: pip download {GENSIM_WHEEL} produced no wheel")
        with zipfile.ZipFile(wheels[0]) as z:
            atomic_write(out, z.read(WIKI_MEMBER))
    return out


# -- MediaWiki markup -> paragraphs ---------------------------------------------------------

_DROP_ELEMENTS = re.compile(r"<(ref|math|gallery|timeline|score|syntaxhighlight|source|code|chem)\b[^>]*?"
                            r"(/>|>.*?</\1\s*>)", re.S | re.I)
_INNERMOST_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_INNERMOST_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S)
_INNERMOST_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXTERNAL_LINK = re.compile(r"\[(?:https?|ftp)://[^\s\]]+(?:\s+([^\]]*))?\]")
_NON_ARTICLE_LINK = re.compile(r"^\s*:?\s*(file|image|category|media|wikipedia|wp|wikt|[a-z]{2,3}(-[a-z]+)?)\s*:", re.I)


def _repeat(pattern: re.Pattern, repl: Any, text: str) -> str:
    while True:
        new = pattern.sub(repl, text)
        if new == text:
            return new
        text = new


def _link(match: re.Match) -> str:
    inner = match.group(1)
    if _NON_ARTICLE_LINK.match(inner):
        return ""
    return inner.split("|")[-1]


def clean_wikitext(text: str) -> list[str]:
    """Paragraphs of plain prose from one article's MediaWiki markup (see the module docstring)."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = _DROP_ELEMENTS.sub("", text)
    text = _repeat(_INNERMOST_TEMPLATE, "", text)
    text = _repeat(_INNERMOST_TABLE, "", text)
    text = _repeat(_INNERMOST_LINK, _link, text)
    text = _EXTERNAL_LINK.sub(lambda m: m.group(1) or "", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"'{2,}", "", text)
    paragraphs = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "=*#:;|!{}[":
            continue  # headings, lists, indents, table rows, leftovers
        line = re.sub(r"\(\s*[;,]?\s*\)", "", line)  # "( )" left by removed templates
        line = re.sub(r"\s+([,.;:])", r"\1", re.sub(r"\s{2,}", " ", line)).strip()
        if len(line.split()) >= 12 and line[-1] in ".!?\"'" and "{{" not in line and "}}" not in line:
            paragraphs.append(line)
    return paragraphs


def wiki_articles() -> list[tuple[str, str]]:
    """(title, prose) of every article in the dump with prose left after cleaning, in dump order."""
    cached = _prose_dir() / f"enwiki-prose-v{_CLEAN_VERSION}.txt"
    if not cached.is_file():
        articles = []
        with bz2.open(fetch_prose(), "rb") as f:
            for _, elem in ET.iterparse(f, events=("end",)):
                if not elem.tag.endswith("}page"):
                    continue
                ns = next((c.text for c in elem.iter() if c.tag.endswith("}ns")), "0")
                title = next((c.text for c in elem.iter() if c.tag.endswith("}title")), "") or ""
                body = next((c.text for c in elem.iter() if c.tag.endswith("}text")), "") or ""
                elem.clear()
                if ns != "0" or body.lstrip().upper().startswith("#REDIRECT"):
                    continue
                paragraphs = clean_wikitext(body)
                if paragraphs:
                    articles.append(f"= {title} =\n" + "\n".join(paragraphs))
        atomic_write(cached, "\n\n".join(articles).encode("utf-8"))
    out = []
    for block in cached.read_text(encoding="utf-8").split("\n\n"):
        head, _, body = block.partition("\n")
        out.append((head.strip("= "), body))
    return out


def wiki_text() -> str:
    """The Wikipedia prose, one paragraph per line, articles in dump order."""
    return "\n".join(body for _, body in wiki_articles())


def lee_training_text() -> str:
    """The ``lee_background`` documents that end before `LEE_FRACTION` of its characters, one per line."""
    text = lee_background_text()
    limit, end, kept = LEE_FRACTION * len(text), 0, []
    for line in text.splitlines(keepends=True):
        end += len(line)
        if end > limit:
            break
        if line.strip():
            kept.append(line.strip())
    return "\n".join(kept)


def training_text(source: str = "prose") -> str:
    """``prose`` (and ``paragraphs``): the Wikipedia prose, then the first Lee documents; ``wiki``: the
    Wikipedia prose alone."""
    if source not in PROSE_SOURCES:
        raise ValueError(f"prose source must be one of {PROSE_SOURCES}, got {source!r}")
    return wiki_text() if source == "wiki" else wiki_text() + "\n" + lee_training_text()


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def training_sentences(source: str = "prose") -> list[str]:
    """Sentences (at least 3 words) of the Wikipedia prose, then (``prose``) the calibration Lee sentences."""
    wiki = [s.strip() for p in wiki_text().splitlines() for s in _SENTENCE_END.split(p) if len(s.split()) >= 3]
    return wiki if source == "wiki" else wiki + lee_background_sentences("calibration")


def training_paragraphs() -> list[str]:
    """Paragraphs (at least 3 words) of the Wikipedia prose, then the calibration Lee documents, whole."""
    return [p for p in training_text("prose").splitlines() if len(p.split()) >= 3]


def noised(texts: list[str], rate: float, g: Any) -> list[str]:
    """``texts`` with each word replaced, at ``rate``, by a word drawn from all of their words (so by
    frequency), seeded by the torch generator ``g``: text no one wrote, so that a student sees new
    contexts each time round instead of the same paragraphs again."""
    import torch

    pool = [w for t in texts for w in t.split()]
    out = []
    for t in texts:
        words = t.split()
        hit = (torch.rand(len(words), generator=g) < rate).tolist()
        picks = torch.randint(len(pool), (len(words),), generator=g).tolist()
        out.append(" ".join(pool[p] if h else w for w, h, p in zip(words, hit, picks)))
    return out


def cropped(texts: list[str], g: Any, min_words: int = CROP_MIN_WORDS) -> list[str]:
    """A random run of words of each of ``texts`` (length uniform from ``min_words``, or the whole text
    when shorter, up to all of it), seeded by the torch generator ``g``: natural text, but a different
    input each time a paragraph comes round."""
    import torch

    out = []
    for t in texts:
        words = t.split()
        low = min(min_words, len(words))
        n = int(torch.randint(low, len(words) + 1, (1,), generator=g))
        start = int(torch.randint(0, len(words) - n + 1, (1,), generator=g))
        out.append(" ".join(words[start:start + n]))
    return out


def _by_length(chunks: list[list[str]], batch_size: int, g: Any, pool: int = 16) -> list[list[str]]:
    """The same texts regrouped so that each batch holds texts of about one length (``pool`` batches at a
    time sorted by words, then the batches in a seeded order): paragraphs run from 3 to 600 words, and a
    batch padded to its longest spends most of its compute on padding."""
    import torch

    out = []
    for s in range(0, len(chunks), pool):
        texts = sorted((t for c in chunks[s:s + pool] for t in c), key=lambda t: len(t.split()))
        out += [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
    return [out[i] for i in torch.randperm(len(out), generator=g).tolist()]


def _lm_batches(spec: Any, source: str, samples: int, seq_len: int, seed: int) -> list[tuple[tuple, dict]]:
    import torch

    tok = spec.extras["tokenizer"]
    text = "\n".join(gloss_paragraphs()) if source == "glosses" else wiki_text()
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    if source not in ("wiki", "glosses"):
        ids += lm_tokens(tok, "calibration")  # exactly the calibration split: never an evaluation token
    n_windows = len(ids) // seq_len
    if samples > n_windows:
        raise ValueError(f"asked for {samples} windows of {seq_len} tokens; the {source} text has {len(ids)} "
                         f"tokens ({n_windows} windows)")
    g = torch.Generator().manual_seed(seed)
    starts = (torch.randperm(n_windows, generator=g)[:samples] * seq_len).tolist()
    t = torch.tensor(ids, dtype=torch.long)
    keys = set(getattr(spec, "example_kwargs", {}) or {}) or {"input_ids"}
    out = []
    for s in starts:
        kw = {"input_ids": t[s:s + seq_len][None].clone()}
        if "attention_mask" in keys:
            kw["attention_mask"] = torch.ones_like(kw["input_ids"])
        out.append(((), kw))
    return out


def training_inputs(spec: Any, name: str, samples: int, seq_len: int | None = None, batch_size: int = 8,
                    seed: int = 0) -> list[tuple[tuple, dict]]:
    """Training batches ``(args, kwargs)`` of the ``name`` prose (one of `PROSE_SOURCES`) for zoo model ``spec``.

    Causal LMs: ``samples`` windows ``[1, seq_len]`` (default 256) drawn without
    replacement (seeded) from the token stream. Sentence encoders: ``samples //
    batch_size`` batches of ``batch_size`` seeded random sentences, padded,
    truncated to ``seq_len`` (default 128), or for ``paragraphs`` and
    ``glosses`` (`sparsecc.data.glosses`) of seeded random paragraphs truncated
    to ``seq_len`` (default 256); more batches than there are paragraphs go
    round them again in a new order. ``noised-paragraphs``: the paragraphs
    with `NOISE_RATE` of their words replaced at random (`noised`);
    ``cropped-paragraphs``: a random run of words of each (`cropped`). Sources joined by ``+``
    (``paragraphs+glosses``) give an equal share of the samples each, their
    batches shuffled together. Other models have no text input: ValueError.
    """
    parts = name.split("+")
    for part in parts:
        if part not in PROSE_SOURCES:
            raise ValueError(f"unknown training data {part!r}; the prose sources are {', '.join(PROSE_SOURCES)}, "
                             "or several joined by '+'")
    if len(parts) > 1:  # an equal share of each source, the batches shuffled together (seeded)
        import torch

        share = max(1, samples // len(parts))
        mixed = [b for i, part in enumerate(parts)
                 for b in training_inputs(spec, part, share, seq_len, batch_size, seed + i)]
        order = torch.randperm(len(mixed), generator=torch.Generator().manual_seed(seed)).tolist()
        return [mixed[j] for j in order]
    task = getattr(spec, "task", "")
    extras = getattr(spec, "extras", {}) or {}
    if "tokenizer" not in extras or task not in ("causal-lm", "feature-extraction"):
        raise ValueError(f"training data {name!r} is text; model {getattr(spec, 'name', '?')!r} "
                         f"(task {task!r}) takes no tokenized text")
    if task == "causal-lm":
        if name in ("noised-paragraphs", "cropped-paragraphs"):
            raise ValueError(f"training data {name!r} is for sentence encoders; language models take windows "
                             "of the token stream (use prose)")
        return _lm_batches(spec, name, samples, seq_len or 256, seed)
    import torch

    n = max(1, samples // batch_size)
    g = torch.Generator().manual_seed(seed)
    whole = name in ("paragraphs", "glosses", "noised-paragraphs", "cropped-paragraphs")
    if whole:
        texts, max_length = gloss_paragraphs() if name == "glosses" else training_paragraphs(), seq_len or 256
        rounds = -(-n * batch_size // len(texts))  # a new seeded order each time round
        order = [j for _ in range(rounds) for j in torch.randperm(len(texts), generator=g).tolist()]
    else:
        texts, max_length = training_sentences(name), seq_len or 128
        if n * batch_size > len(texts):
            raise ValueError(f"asked for {n} batches of {batch_size} sentences; {len(texts)} exist")
        order = torch.randperm(len(texts), generator=g).tolist()
    chunks = [[texts[j] for j in order[i * batch_size:(i + 1) * batch_size]] for i in range(n)]
    if name in ("noised-paragraphs", "cropped-paragraphs"):  # a new input each time a paragraph comes round
        flat = [t for c in chunks for t in c]
        flat = noised(flat, NOISE_RATE, g) if name == "noised-paragraphs" else cropped(flat, g)
        chunks = [flat[i * batch_size:(i + 1) * batch_size] for i in range(len(chunks))]
    if whole:
        chunks = _by_length(chunks, batch_size, g)
    keys = list(getattr(spec, "example_kwargs", {}) or {}) or ["input_ids", "attention_mask"]
    out = []
    for chunk in chunks:
        enc = extras["tokenizer"](chunk, padding=True, truncation=True, max_length=max_length,
                                  return_tensors="pt")
        out.append(((), {k: enc[k] for k in keys if k in enc}))
    return out

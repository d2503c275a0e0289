"""WordNet's definitions and examples as English prose, for training sentence encoders.

Source: Debian's ``wordnet-base`` (WordNet 3.0, Princeton University; a
permissive licence, see the package's ``copyright``), read from
``/usr/share/wordnet`` when installed, else from the package itself
(``apt-get download``, unpacked with `sparsecc.data.debian.package_files`).
Each line of ``data.noun``, ``data.verb``, ``data.adj`` and ``data.adv`` is one
synset: its words, pointers, then ``| gloss``, a definition often followed by
quoted examples. 117,659 synsets, 1.46 M words: almost four times the Wikipedia
prose of `sparsecc.data.prose`, and every word sense of English once.

Why: a student distilled for thousands of steps on the 4,726 Wikipedia and
Lee paragraphs matches its teacher on them far better than on text it never
saw (MiniLM 2:4: cosine 0.990 on training paragraphs, 0.963 on the Lee
evaluation documents). More distinct text is the cure; the glosses are the
largest clean English that installs offline.

`gloss_paragraphs` turns the synsets into paragraph-length texts: each synset
becomes a sentence ("Strategic intelligence: intelligence that is required
for forming policy ... ."), and consecutive synsets of one lexicographer file
(one topic: ``noun.animal``, ``verb.motion``, ...; the data files keep them
together) are joined until a text holds about `PARAGRAPH_WORDS` words, the
length of a Lee document. Definitions are not news: the texts widen what a
student sees, the Wikipedia and Lee paragraphs keep its register (``data:
paragraphs+glosses`` trains on both, `sparsecc.data.prose.training_inputs`).

Nothing here is evaluation text: the Lee documents share no sentence with the
glosses (tests/data/test_glosses.py checks it on the real files when fetched).

Cache: ``data_dir()/wordnet/glosses.txt``, one synset per line
(``LEXFILE<TAB>sentence``); ``python -m sparsecc.data fetch`` fills it.
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path

from sparsecc.data.cache import DataUnavailableError, atomic_write, data_dir
from sparsecc.data.debian import package_files

__all__ = ["WORDNET_DEB", "WORDNET_DIR", "PARAGRAPH_WORDS", "parse_synset", "fetch_glosses", "gloss_sentences",
           "gloss_paragraphs"]

WORDNET_DEB = "wordnet-base"
WORDNET_DIR = Path("/usr/share/wordnet")
DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
PARAGRAPH_WORDS = 90


def _cache() -> Path:
    return data_dir() / "wordnet" / "glosses.txt"


def parse_synset(line: str) -> tuple[str, str] | None:
    """``(lexicographer file number, sentence)`` of one ``data.*`` line, or None for the licence header.

    Line: ``offset lex_filenum ss_type w_cnt (word lex_id)... p_cnt ... | gloss``; ``w_cnt`` is hex.
    The sentence names the synset's first two words (underscores to spaces), then the gloss."""
    if line.startswith("  ") or " | " not in line:
        return None
    head, gloss = line.split(" | ", 1)
    fields = head.split()
    if len(fields) < 6:
        raise ValueError(f"not a WordNet synset line: {line[:80]!r}")
    count = int(fields[3], 16)
    words = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
    words = [w[:-3] if w.endswith(("(a)", "(p)")) else w[:-4] if w.endswith("(ip)") else w for w in words]
    gloss = gloss.strip().rstrip(";").strip()
    if not gloss:
        return None
    name = words[0] if len(words) == 1 or words[1].lower() == words[0].lower() else f"{words[0]} ({words[1]})"
    sentence = f"{name[:1].upper()}{name[1:]}: {gloss}"
    return fields[1], sentence if sentence.endswith((".", "!", "?")) else sentence + "."


def _data_files() -> dict[str, bytes]:
    if all((WORDNET_DIR / f).is_file() for f in DATA_FILES):
        return {f: (WORDNET_DIR / f).read_bytes() for f in DATA_FILES}
    with tempfile.TemporaryDirectory(prefix="sparsecc-wordnet-") as tmp:
        found = {name: data for name, data in package_files(WORDNET_DEB, WORDNET_DIR, "", Path(tmp))
                 if name in DATA_FILES}
    missing = [f for f in DATA_FILES if f not in found]
    if missing:
        raise DataUnavailableError(f"Debian's {WORDNET_DEB} holds no {', '.join(missing)} under {WORDNET_DIR}")
    return found


def fetch_glosses() -> Path:
    """The cached ``glosses.txt``: written once from the WordNet data files (installed, or downloaded)."""
    out = _cache()
    if out.is_file():
        return out
    lines = []
    for name, data in _data_files().items():
        pos = name.split(".")[1]
        for raw in data.decode("latin-1").splitlines():
            parsed = parse_synset(raw)
            if parsed is not None:
                lines.append(f"{pos}.{parsed[0]}\t{parsed[1]}")
    atomic_write(out, ("\n".join(lines) + "\n").encode())
    return out


@lru_cache(maxsize=1)
def _gloss_lines() -> tuple[tuple[str, str], ...]:
    path = Path(os.environ["SPARSECC_GLOSSES"]) if os.environ.get("SPARSECC_GLOSSES") else fetch_glosses()
    out = []
    for line in path.read_text().splitlines():
        topic, _, sentence = line.partition("\t")
        if sentence:
            out.append((topic, sentence))
    return tuple(out)


def gloss_sentences() -> list[str]:
    """One sentence per synset, in the data files' order (nouns, verbs, adjectives, adverbs)."""
    return [s for _, s in _gloss_lines()]


def gloss_paragraphs(words: int = PARAGRAPH_WORDS) -> list[str]:
    """Consecutive synsets of one lexicographer file joined until each text reaches ``words`` words."""
    out: list[str] = []
    run: list[str] = []
    count, topic = 0, None
    for t, sentence in _gloss_lines():
        if run and (t != topic or count >= words):
            out.append(" ".join(run))
            run, count = [], 0
        run.append(sentence)
        count += len(sentence.split())
        topic = t
    if run:
        out.append(" ".join(run))
    return out

"""How far a recovered MiniLM program matches its teacher on text it trained on, and on text it never saw.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/quality_gap_minilm.py PROGRAM.pt2 [PROGRAM.pt2 ...] [--n 300]

For each saved program (``bench/bench_recovery.py --cache-dir`` writes them),
the mean cosine of its mean-pooled embeddings to the dense MiniLM's on:

- ``training paragraphs``: ``--n`` seeded random paragraphs of
  `sparsecc.data.prose.training_paragraphs` (Wikipedia and the calibration
  Lee documents: what ``data: paragraphs`` trains on);
- ``glosses``: ``--n`` seeded random texts of `sparsecc.data.glosses.gloss_paragraphs`
  (what ``data: glosses`` trains on);
- ``trained news``: the calibration half of ``lee_background.cor``
  (`sparsecc.data.prose.lee_training_text`, a part of ``paragraphs``);
- ``unseen news``: ``--n`` documents of the second half of
  ``lee_background.cor`` (the language-model evaluation text: no recovery run
  trains on it);
- ``Lee evaluation documents``: the 50 documents of the ``lee-similarity``
  protocol (its ``cosine_to_dense``).

A gap between trained and unseen text of one kind (news) says the student
learnt its training text rather than the teacher; a gap between kinds
(encyclopedia, definitions, news) says how far what it learnt on one kind
carries to another.
"""

from __future__ import annotations

import argparse
import random

import torch


def _embed(forward, tok, texts: list[str], batch: int = 16) -> torch.Tensor:
    out = []
    for i in range(0, len(texts), batch):
        enc = tok(texts[i:i + batch], padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = forward(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        hidden = hidden[0] if isinstance(hidden, (tuple, list)) else getattr(hidden, "last_hidden_state", hidden)
        mask = enc["attention_mask"].double()[..., None]
        out.append((hidden.double() * mask).sum(1) / mask.sum(1))
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("programs", nargs="+", help="saved sparse MiniLM programs (.pt2)")
    p.add_argument("--n", type=int, default=300, help="texts per set (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--words", type=int, default=0,
                   help="cut every text to its first N words (0: whole): is a set scored lower only for being shorter?")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from sparsecc.core.program import load_program
    from sparsecc.data import lee_background_text, lee_documents
    from sparsecc.data.glosses import gloss_paragraphs
    from sparsecc.data.prose import lee_training_text, training_paragraphs
    from sparsecc.models import get_model

    spec = get_model("minilm")
    tok = spec.extras["tokenizer"]
    rng = random.Random(args.seed)
    background = lee_background_text()
    unseen = [line.strip() for line in background[len(background) // 2:].splitlines() if len(line.split()) >= 3]
    sets = {"training paragraphs": rng.sample(training_paragraphs(), args.n),
            "glosses": rng.sample(gloss_paragraphs(), args.n),
            "trained news": lee_training_text().splitlines()[:args.n],
            "unseen news": unseen[:args.n],
            "Lee evaluation documents": lee_documents()}
    if args.words:
        sets = {name: [" ".join(t.split()[:args.words]) for t in texts] for name, texts in sets.items()}
    dense = {name: _embed(spec.model.eval(), tok, texts) for name, texts in sets.items()}
    print("| program | " + " | ".join(f"{k} ({len(v)})" for k, v in sets.items()) + " |")
    print("| --- |" + " --- |" * len(sets))
    for path in args.programs:
        module = load_program(path).module()
        cells = [f"{float((_embed(module, tok, texts) * dense[name]).sum(-1).mean()):.4f}"
                 for name, texts in sets.items()]
        print(f"| {path.rsplit('/', 1)[-1]} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

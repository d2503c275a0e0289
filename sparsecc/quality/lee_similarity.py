"""``lee-similarity``: embedding cosine against human similarity ratings of the 50 Lee documents."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sparsecc.data import lee_documents, lee_similarities
from sparsecc.quality.forwards import Forward
from sparsecc.quality.metrics import pearson, spearman
from sparsecc.quality.task import BATCH, EvalOptions, batches, tick

__all__ = ["collect_lee", "score_lee"]


def collect_lee(fwd: Forward, spec, opts: EvalOptions, progress) -> dict[str, Any]:
    tok = spec.extras["tokenizer"]
    docs = lee_documents()
    keys = list(spec.example_kwargs or {"input_ids": None, "attention_mask": None})
    bs = fwd.max_batch(opts.batch_size or BATCH["lee-similarity"])
    embs = []
    for i, j in batches(len(docs), bs):
        enc = tok(docs[i:j], padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = fwd((), {k: enc[k] for k in keys})[0].double()
        mask = enc["attention_mask"].double()[..., None]
        embs.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0))
        tick(progress, "Lee documents", j, len(docs))
    return {"embeddings": torch.cat(embs)}


def score_lee(raw, ref, opts):
    e = torch.nn.functional.normalize(raw["embeddings"], dim=-1)
    sim = (e @ e.T).numpy()
    human = lee_similarities()
    iu = np.triu_indices(len(human), 1)
    metrics = {"spearman": spearman(sim[iu], human[iu]), "pearson": pearson(sim[iu], human[iu])}
    if ref is not None:
        r = torch.nn.functional.normalize(ref["embeddings"], dim=-1)
        metrics["cosine_to_dense"] = float((e * r).sum(-1).mean())
    return metrics, {"documents": len(human), "pairs": len(iu[0]), "pooling": "mean over attention mask"}

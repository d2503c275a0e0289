"""``perplexity``: causal-LM perplexity on the evaluation half of ``lee_background``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sparsecc.data import lm_windows
from sparsecc.quality.forwards import Forward
from sparsecc.quality.metrics import perplexity_from_nll
from sparsecc.quality.task import BATCH, EvalOptions, batches, tick

__all__ = ["collect_perplexity", "score_perplexity"]


def collect_perplexity(fwd: Forward, spec, opts: EvalOptions, progress) -> dict[str, Any]:
    tok = spec.extras["tokenizer"]
    stride = opts.stride or opts.window
    windows = lm_windows(tok, "evaluation", window=opts.window, stride=stride, n=opts.max_windows)
    keys = list(spec.example_kwargs or {"input_ids": None})
    bs = fwd.max_batch(opts.batch_size or BATCH["perplexity"])
    nll, counted = 0.0, 0
    for i, j in batches(len(windows), bs):
        ids = windows[i:j]
        kw = {"input_ids": ids}
        if "attention_mask" in keys:
            kw["attention_mask"] = torch.ones_like(ids)
        logits = fwd((), kw)[0].float()
        for r in range(j - i):
            # The first window scores tokens 1..W-1; later ones only what the one before did not.
            first = 1 if i + r == 0 else max(1, opts.window - stride)
            lp = torch.log_softmax(logits[r, first - 1 : -1].double(), -1)
            tgt = ids[r, first:]
            nll -= float(lp.gather(-1, tgt[:, None]).sum())
            counted += int(tgt.numel())
        tick(progress, "perplexity windows", j, len(windows))
    return {"nll": nll, "tokens": counted, "windows": len(windows)}


def score_perplexity(raw, ref, opts):
    metrics = {"perplexity": perplexity_from_nll(raw["nll"], raw["tokens"])}
    if ref is not None:
        metrics["dense_perplexity"] = perplexity_from_nll(ref["nll"], ref["tokens"])
    return metrics, {"tokens": raw["tokens"], "windows": raw["windows"], "window": opts.window,
                     "stride": opts.stride or opts.window, "split": "evaluation half of lee_background"}

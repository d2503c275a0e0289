"""Run a block-by-block ONNX lowering (`sparsecc.flows.streamed_lowering`) with ONNX Runtime, without torch.

The bundle's ``manifest.json`` names the files: ``embedding.onnx`` (token ids
-> hidden states), ``blocks/block_NNN.onnx`` (hidden -> hidden, one decoder
block each) and ``head.onnx`` (final RMSNorm and LM head: hidden -> logits).
`run_blocks` chains them: embedding, block_000 ... block_N, head. By default
one session is open at a time (each block's session is dropped before the
next one is built), so memory stays at one block's weights plus the hidden
states; ``keep_sessions=True`` keeps them all for repeated calls.

This file imports only numpy and onnxruntime (and the standard library); the
lowering copies it into the bundle as ``run_blocks.py``:

    python run_blocks.py BUNDLE --ids 1,2,3,4        # logits of one sequence; prints the argmax tokens
    python run_blocks.py BUNDLE --random 16 --seed 0 # random token ids of length 16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["load_manifest", "run_blocks", "BlockChain"]

MANIFEST = "manifest.json"


def load_manifest(bundle: str | Path) -> dict[str, Any]:
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{bundle}: no {MANIFEST} (not a block-by-block ONNX lowering)")
    return json.loads(path.read_text())


def _session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class BlockChain:
    """The bundle's files as one callable: ``chain(input_ids) -> logits`` (numpy in, numpy out)."""

    def __init__(self, bundle: str | Path, threads: int | None = None, keep_sessions: bool = False):
        self.root = Path(bundle)
        self.manifest = load_manifest(self.root)
        self.threads, self.keep = threads, keep_sessions
        self._sessions: dict[str, Any] = {}
        self.stages = [self.manifest["embedding"], *self.manifest["blocks"], self.manifest["head"]]

    def _get(self, part: dict[str, Any]) -> Any:
        s = self._sessions.get(part["file"])
        if s is None:
            s = _session(self.root / part["file"], self.threads)
            if self.keep:
                self._sessions[part["file"]] = s
        return s

    def check_ids(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"input_ids must be integers of shape [batch, seq], got {ids.dtype}{list(ids.shape)}")
        seq, batch, vocab = self.manifest["seq_len"], self.manifest["batch"], self.manifest["config"]["vocab"]
        if not seq["min"] <= ids.shape[1] <= seq["max"]:
            raise ValueError(f"sequence length {ids.shape[1]} is outside the lowered range [{seq['min']}, {seq['max']}]")
        if not batch["min"] <= ids.shape[0] <= batch["max"]:
            raise ValueError(f"batch {ids.shape[0]} is outside the lowered range [{batch['min']}, {batch['max']}]")
        if ids.size and (ids.min() < 0 or ids.max() >= vocab):
            raise ValueError(f"token ids must lie in [0, {vocab})")
        return ids.astype(np.int64)

    def __call__(self, input_ids: np.ndarray, each: Callable[[int, np.ndarray], None] | None = None) -> np.ndarray:
        """Logits ``[batch, seq, vocab]`` (float32); ``each(stage, output)`` sees every stage's output."""
        x: np.ndarray = self.check_ids(input_ids)
        for i, part in enumerate(self.stages):
            session = self._get(part)
            x = session.run([part["outputs"][0]["name"]], {part["inputs"][0]["name"]: x})[0]
            del session
            if each is not None:
                each(i, x)
        return x


def run_blocks(bundle: str | Path, input_ids: Sequence[Sequence[int]] | np.ndarray, threads: int | None = None) -> np.ndarray:
    """Logits of ``input_ids`` ([batch, seq] or [seq]) through embedding, every block and the head."""
    return BlockChain(bundle, threads)(np.asarray(input_ids))


def main(argv: Sequence[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description="Chain a block-by-block ONNX lowering with ONNX Runtime.")
    p.add_argument("bundle", nargs="?", default=str(here) if (here / MANIFEST).is_file() else None,
                   help="The lowering's folder (default: this file's folder when it holds manifest.json).")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--ids", help="Comma-separated token ids of one sequence.")
    g.add_argument("--random", type=int, metavar="N", help="N random token ids.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--save", metavar="NPY", help="Write the logits to this .npy file.")
    args = p.parse_args(argv)
    if args.bundle is None:
        p.error("BUNDLE is required")
    chain = BlockChain(args.bundle, args.threads)
    if args.ids:
        ids = np.array([[int(t) for t in args.ids.split(",")]], dtype=np.int64)
    else:
        ids = np.random.default_rng(args.seed).integers(0, chain.manifest["config"]["vocab"], (1, args.random))
    logits = chain(ids)
    if args.save:
        np.save(args.save, logits)
    print(json.dumps({"logits_shape": list(logits.shape), "next_tokens": logits[0].argmax(-1).tolist()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""RewriteBlockSparseAttentionPass: run block-sparse attention on the C++ kernel that skips blocks.

``sparsecc::block_sparse_attention(q, k, v, mask, is_causal, scale, block, tau, sink, reuse, key)``
(put there by `sparsecc.passes.BlockSparseAttentionPass`, computed by its
PyTorch reference: dense scores with the skipped blocks masked out) becomes

    kept = sparsecc::attention_blocks(q, k, mask, is_causal, scale, block, tau, sink, reuse, key)
    out  = sparsecc::block_attention(q, k, v, mask, is_causal, scale, block, kept)

the same block mask, then the kernel that computes only the kept blocks
(`sparsecc.kernels.block_attention`). Inputs that are not float32 keep the
reference op.
"""

from __future__ import annotations

import torch
from torch.export import ExportedProgram

import sparsecc.kernels as kernels
from sparsecc.core.pass_infra import PassBase, PassResult
from sparsecc.core.program import ProgramEditor

__all__ = ["RewriteBlockSparseAttentionPass"]


class RewriteBlockSparseAttentionPass(PassBase):
    """Split each ``block_sparse_attention`` into its block mask and the block-skipping kernel."""

    def __init__(self) -> None:
        self.rewritten: list[str] = []  # call-site keys, after call

    def requires(self, program: ExportedProgram) -> None:
        kernels.load()

    def call(self, program: ExportedProgram) -> PassResult:
        ed = ProgramEditor(program)
        self.rewritten = []
        reference = torch.ops.sparsecc.block_sparse_attention.default
        blocks_op = torch.ops.sparsecc.attention_blocks.default
        kernel_op = torch.ops.sparsecc.block_attention.default
        for node in list(ed.graph.nodes):
            if node.op != "call_function" or node.target != reference:
                continue
            q, k, v, mask, is_causal, scale, block, tau, sink, reuse, key = node.args
            vals = [a.meta.get("val") for a in (q, k, v)]
            if any(getattr(t, "dtype", None) != torch.float32 for t in vals):
                continue
            with self.at(node):
                with ed.graph.inserting_before(node):
                    b_args = (q, k, mask, is_causal, scale, block, tau, sink, reuse, key)
                    kept = ed.graph.call_function(blocks_op, b_args)
                    kept.meta["val"] = ed.fake_call(blocks_op, *b_args)
                    k_args = (q, k, v, mask, is_causal, scale, block, kept)
                    new = ed.graph.call_function(kernel_op, k_args)
                    new.meta["val"] = ed.fake_call(kernel_op, *k_args)
                for n in (kept, new):
                    for meta in ("nn_module_stack", "stack_trace", "source_fn_stack"):
                        if meta in node.meta:
                            n.meta[meta] = node.meta[meta]
                node.replace_all_uses_with(new)
                ed.graph.erase_node(node)
            self.rewritten.append(key)
        return PassResult(ed.finish(), bool(self.rewritten))

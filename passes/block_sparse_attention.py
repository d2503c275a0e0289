"""BlockSparseAttentionPass: run attention over the key blocks that matter (training-free block sparsity).

Two forms of attention are rewritten to ``sparsecc::block_sparse_attention``
(`sparsecc.kernels.attention`):

- ``aten.scaled_dot_product_attention(q, k, v, attn_mask?, dropout_p=0, is_causal, scale)``;
- the eager form that transformers' ``attn_implementation="eager"`` exports
  (MiniLM, SmolLM2): ``matmul(q, k^T)``, an optional scalar ``mul``/``div``,
  an optional additive mask, ``softmax(-1)`` (dtype fp32 or none), optional
  no-op ``to``/``dropout`` in eval, ``matmul(p, v)``. Keys and values repeated
  for grouped-query heads (``reshape(expand(unsqueeze(k, 2)))``) are taken
  before the repeat; the op shares them itself.

The op picks, per call, the key blocks of each query block whose pooled
scores carry ``tau`` of the mass (always the diagonal, never a block the mask
or causality hides) and computes exact softmax attention over those. Its own
implementation is plain PyTorch, so the program runs and exports anywhere;
the torch-sparse backend runs it on the C++ kernel that skips the other
blocks. ``tau=1`` keeps every visible block: the same values as dense.

Attention whose probabilities are read elsewhere (``output_attentions``), that
applies dropout, or whose mask is neither float32 nor bool, is left alone and
named in ``skipped``.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Sequence

import torch
from torch.export import ExportedProgram

from sparsecc.core.ir import set_node_info
from sparsecc.core.pass_infra import PassBase, PassResult
from sparsecc.core.program import ProgramEditor
from sparsecc.kernels.attention import check_attention_mask, check_block

__all__ = ["BlockSparseAttentionPass", "AttentionSite", "find_attention"]

aten = torch.ops.aten
_ASSERT = aten._assert_tensor_metadata.default
_SOFTMAX = (aten.softmax.int, aten._softmax.default)
_NO_OPS = (aten.to.dtype, aten.clone.default, aten.alias.default, aten.contiguous.default)


class AttentionSite:
    """One attention found in a graph: the node to replace and the op's arguments."""

    def __init__(self, node: torch.fx.Node, q, k, v, mask, is_causal: bool, scale: float, key: str):
        self.node, self.q, self.k, self.v, self.mask = node, q, k, v, mask
        self.is_causal, self.scale, self.key = is_causal, scale, key


def _users(node: torch.fx.Node) -> list[torch.fx.Node]:
    return [u for u in node.users if u.target != _ASSERT]


def _val(node) -> torch.Tensor | None:
    v = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return v if isinstance(v, torch.Tensor) else None


def _only_user(node: torch.fx.Node, user: torch.fx.Node) -> bool:
    return _users(node) == [user]


def _module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [v[0] for v in stack.values() if isinstance(v, tuple) and v and v[0]]
    return paths[-1] if paths else node.name


def _unrepeat(node) -> tuple[object, int]:
    """``(x, rep)`` when ``node`` is ``reshape(expand(unsqueeze(x, 2)))`` repeating heads ``rep`` times."""
    if not (isinstance(node, torch.fx.Node) and node.target in (aten.reshape.default, aten.view.default,
                                                                 aten._unsafe_view.default)):
        return node, 1
    ex = node.args[0]
    if not (isinstance(ex, torch.fx.Node) and ex.target == aten.expand.default and _only_user(ex, node)):
        return node, 1
    un = ex.args[0]
    if not (isinstance(un, torch.fx.Node) and un.target == aten.unsqueeze.default and un.args[1] == 2
            and _only_user(un, ex)):
        return node, 1
    x, out = _val(un.args[0]), _val(node)
    if x is None or out is None or x.dim() != 4 or out.dim() != 4 or out.shape[1] % x.shape[1]:
        return node, 1
    return un.args[0], out.shape[1] // x.shape[1]


def _through_no_ops(p: torch.fx.Node, mm2: torch.fx.Node) -> torch.fx.Node | str | None:
    """Walk back from ``p`` (read by ``mm2``) to the softmax; None if there is none, a reason if it cannot go."""
    node, child = p, mm2
    while True:
        if not _only_user(node, child):
            return "probabilities read elsewhere"
        if node.target in _SOFTMAX:
            return node
        if node.target == aten.dropout.default:
            if node.args[2] if len(node.args) > 2 else node.kwargs.get("train", False):
                return "dropout in training mode"
        elif node.target == aten.to.dtype:
            if node.args[1] != torch.float32:
                return f"probabilities cast to {node.args[1]}"
        elif node.target not in _NO_OPS:
            return None
        if not isinstance(node.args[0], torch.fx.Node):
            return None
        node, child = node.args[0], node


def _is_scores(node) -> bool:
    return isinstance(node, torch.fx.Node) and node.target in (aten.matmul.default, aten.mul.Tensor,
                                                                aten.div.Tensor)


def _eager_site(mm2: torch.fx.Node) -> AttentionSite | str | None:
    """The eager form ending at ``mm2 = matmul(p, v)``; None if it is no attention, a reason if unsupported."""
    p, v = mm2.args[0], mm2.args[1]
    if not isinstance(p, torch.fx.Node):
        return None
    sm = _through_no_ops(p, mm2)
    if not isinstance(sm, torch.fx.Node):
        return sm
    if sm.args[1] not in (-1, 3) or (sm.target == aten.softmax.int and len(sm.args) > 2
                                       and sm.args[2] not in (None, torch.float32)):
        return "softmax over another dim or dtype"
    x, child, mask, scale = sm.args[0], sm, None, 1.0
    if x.target == aten.add.Tensor and all(isinstance(a, torch.fx.Node) for a in x.args[:2]):
        scores, mask = (x.args[0], x.args[1]) if _is_scores(x.args[0]) else (x.args[1], x.args[0])
        if not _only_user(x, child):
            return "scores read elsewhere"
        x, child = scores, x
    if x.target in (aten.mul.Tensor, aten.div.Tensor) and isinstance(x.args[1], (int, float)):
        if not _only_user(x, child):
            return "scores read elsewhere"
        scale = float(x.args[1]) if x.target == aten.mul.Tensor else 1.0 / float(x.args[1])
        x, child = x.args[0], x
    if not isinstance(x, torch.fx.Node) or x.target != aten.matmul.default:
        return None
    if not _only_user(x, child):
        return "scores read elsewhere"
    q, kt = x.args[0], x.args[1]
    if not (isinstance(kt, torch.fx.Node) and kt.target == aten.transpose.int
            and sorted(d % 4 for d in kt.args[1:3]) == [2, 3] and _only_user(kt, x)):
        return None
    k = kt.args[0]
    qv, kv, vv, ov = _val(q), _val(k), _val(v), _val(mm2)
    if any(t is None or t.dim() != 4 or t.dtype != torch.float32 for t in (qv, kv, vv, ov)):
        return "not float32 [batch, heads, tokens, head_dim] tensors"
    k0, rk = _unrepeat(k)
    v0, rv = _unrepeat(v)
    if rk == rv and rk > 1:
        k, v = k0, v0
    return AttentionSite(mm2, q, k, v, mask, False, scale, _module_path(mm2))


def _sdpa_site(node: torch.fx.Node) -> AttentionSite | str:
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    defaults = (None, None, None, None, 0.0, False, None, False)
    a = dict(zip(names, defaults))
    a.update(zip(names, node.args))
    a.update(node.kwargs)
    if a["dropout_p"]:
        return "attention dropout"
    q, k = _val(a["query"]), _val(a["key"])
    if q is None or k is None or q.dim() != 4 or q.dtype != torch.float32:
        return "not float32 [batch, heads, tokens, head_dim] tensors"
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(q.shape[-1])
    return AttentionSite(node, a["query"], a["key"], a["value"], a["attn_mask"], bool(a["is_causal"]),
                         float(scale), _module_path(node))


def find_attention(graph: torch.fx.Graph) -> tuple[list[AttentionSite], dict[str, str]]:
    """Every attention the op can take, and why the others cannot (by node name)."""
    sites, skipped = [], {}
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target == aten.scaled_dot_product_attention.default:
            found = _sdpa_site(node)
        elif node.target == aten.matmul.default:
            found = _eager_site(node)
        else:
            continue
        if isinstance(found, AttentionSite):
            why = check_attention_mask(_val(found.mask), _val(found.q), _val(found.k)) \
                if found.mask is not None else None
            if why is None and found.mask is not None and _val(found.mask) is None:
                why = "attention mask without a known shape"
            if why is not None:
                skipped[node.name] = why
                continue
            sites.append(found)
        elif isinstance(found, str):
            skipped[node.name] = found
    return sites, skipped


class BlockSparseAttentionPass(PassBase):
    """Rewrite attention to ``sparsecc::block_sparse_attention`` (block ``block`` tokens, kept mass ``tau``).

    ``sink`` always keeps the first key block; ``reuse=N`` recomputes each call
    site's block mask every N calls with the same shapes (0: every call);
    ``include`` / ``exclude`` are globs on the attention's module path
    (``model.layers.3.self_attn``).
    """

    def __init__(self, block: int = 64, tau: float = 0.95, *, sink: bool = False, reuse: int = 0,
                 include: Sequence[str] = ("*",), exclude: Sequence[str] = ()):
        check_block(block)
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 < tau <= 1.0:
            raise ValueError(f"kept mass tau must be a number in (0, 1], got {tau!r}")
        if isinstance(reuse, bool) or not isinstance(reuse, int) or reuse < 0:
            raise ValueError(f"reuse must be a non-negative integer, got {reuse!r}")
        self.block, self.tau, self.sink, self.reuse = block, float(tau), bool(sink), reuse
        self.include, self.exclude = tuple(include), tuple(exclude)
        self.rewritten: list[str] = []  # call-site keys, after call
        self.skipped: dict[str, str] = {}  # node name -> why it stays dense

    def _chosen(self, key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, p) for p in self.include) and \
            not any(fnmatch.fnmatchcase(key, p) for p in self.exclude)

    def call(self, program: ExportedProgram) -> PassResult:
        ed = ProgramEditor(program)
        sites, self.skipped = find_attention(ed.graph)
        self.rewritten = []
        op = torch.ops.sparsecc.block_sparse_attention.default
        for site in sites:
            if not self._chosen(site.key):
                continue
            key = site.key if site.key not in self.rewritten else f"{site.key}#{len(self.rewritten)}"
            with self.at(site.node):
                args = (site.q, site.k, site.v, site.mask, site.is_causal, site.scale, self.block, self.tau,
                        self.sink, self.reuse, key)
                with ed.graph.inserting_before(site.node):
                    new = ed.graph.call_function(op, args)
                new.meta["val"] = ed.fake_call(op, *args)
                for meta in ("nn_module_stack", "stack_trace", "source_fn_stack"):
                    if meta in site.node.meta:
                        new.meta[meta] = site.node.meta[meta]
                set_node_info(new, extra={"block_sparse_attention": key})
                site.node.replace_all_uses_with(new)
                ed.graph.erase_node(site.node)
            self.rewritten.append(key)
        if not self.rewritten:  # untouched, down to the metadata asserts that finishing would drop
            return PassResult(program, False)
        return PassResult(ed.finish(), True)

    def ensures(self, program: ExportedProgram) -> None:
        ops = [n for n in program.graph.nodes if n.target == torch.ops.sparsecc.block_sparse_attention.default]
        keys = {n.args[10] for n in ops}
        missing = [k for k in self.rewritten if k not in keys]
        if missing:
            raise AssertionError(f"attention not rewritten: {', '.join(missing)}")

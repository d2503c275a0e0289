"""Kernel choice for int8-quantized layers: int8 sparse kernels against the fastest dense alternative.

A layer whose weight carries an int8 grid (`sparsecc.passes.QuantizeWeightsPass`)
is timed, at its activation shape, as:

- dense: torch fp32 (``dense``), torch's dynamic int8 linear (``dense_int8_torch``),
  sparsecc's own dense int8 kernel (``dense_int8@<isa>``), and, when ONNX
  Runtime is installed, ORT fp32 (``ort_dense``) and ORT ``quantize_dynamic``
  int8 (``ort_int8_dense``);
- sparse: ``int8_g4@<isa>`` (1x4 row groups, the unstructured layout) and
  ``int8_bsr<B>@<isa>`` for the blocks that divide the weight, on each ISA
  (AVX-512 VNNI is not always the faster one at few tokens).

The fastest sparse variant is kept only when it beats the fastest dense one
by the margin; the reason names that dense alternative, so a layer never
"wins" against a dense product slower than what the user would deploy.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from sparsecc import kernels
from sparsecc.core.ir import get_node_info
from sparsecc.core.program import placeholders_by_target
from sparsecc.core.timing import time_interleaved
from sparsecc.backends.torch_sparse.dense_reference import ort_linear, torch_dynamic_int8

__all__ = ["INT8_KERNELS", "available_isas", "layer_quant", "measure_int8", "parse_variant", "pick"]

INT8_KERNELS = ("int8_g4", "int8_bsr")  # KernelChoice.kernel values of int8 layers (block 1 = 1x4 groups)
_DENSE_PREFIXES = ("dense", "ort_")


def available_isas(int8: bool) -> list[str]:
    """The vector ISAs this CPU runs (portable code is never the fastest, so it is not timed)."""
    probe = kernels.int8_isa if int8 else kernels.isa
    start = kernels.isa()
    found = []
    for name in ("avx512", "avx2"):
        try:
            probe(name)
            found.append(name)
        except RuntimeError:
            pass
    kernels.isa(start)
    return found


def layer_quant(program: Any, layer: Any) -> dict | None:
    """The int8 record of a linear layer's weight (None: not quantized, or a conv, which stays fp32)."""
    if layer.op != "linear" or layer.shape[1] % 4:
        return None
    node = placeholders_by_target(program).get(layer.fqn)
    info = get_node_info(node) if node is not None else None
    return None if info is None else info.extra.get("quant")


def parse_variant(name: str) -> tuple[str, int, str]:
    """``int8_bsr8@avx2`` -> ("int8_bsr", 8, "avx2"); ``int8_g4@avx512`` -> ("int8_g4", 1, "avx512");
    ``bsr8@avx2`` -> ("bsr", 8, "avx2"); ``csr`` -> ("csr", 1, "")."""
    base, _, isa = name.partition("@")
    if base == "int8_g4":
        return base, 1, isa
    kernel = base.rstrip("0123456789")
    return kernel, int(base[len(kernel):] or 1), isa


def is_dense(name: str) -> bool:
    return name.startswith(_DENSE_PREFIXES)


def measure_int8(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, *, blocks: Sequence[int],
                 isas: Sequence[str], ort: bool, act_scale: float, rounds: int, sample_s: float,
                 threads: int | None = None) -> dict[str, float]:
    """Median milliseconds of every dense and int8 sparse variant of one linear layer ``w [out, in]``."""
    q, scale = kernels.quantize_per_channel(w)
    x2 = x.reshape(-1, w.shape[1])
    variants: dict[str, Callable[[], Any]] = {"dense": lambda: torch.nn.functional.linear(x, w, bias)}
    fb = torch_dynamic_int8(w, bias, x2)
    if fb is not None:
        variants["dense_int8_torch"] = fb
    if ort:
        for name, int8 in (("ort_dense", False), ("ort_int8_dense", True)):
            f = ort_linear(w, bias, x, int8=int8, threads=threads)
            if f is not None:
                variants[name] = f
    layouts: list[tuple[str, Any]] = []
    if w.shape[1] % 4 == 0:
        layouts.append(("int8_g4", kernels.compress_int8(q, scale, (1, 4))))
        layouts += [(f"int8_bsr{b}", kernels.compress_int8(q, scale, b)) for b in blocks
                    if (b, b) in kernels.INT8_BLOCKS and w.shape[0] % b == 0 and w.shape[1] % b == 0]
    for isa in isas:
        if w.shape[1] % 4 == 0:
            variants[f"dense_int8@{isa}"] = (lambda i=isa: kernels.dense_int8_linear(x, q, scale, bias, act_scale, i))
        for name, packed in layouts:
            variants[f"{name}@{isa}"] = (lambda p=packed, i=isa: kernels.int8_linear(x, p, bias, act_scale, i))
    with torch.inference_mode():
        med = time_interleaved(variants, rounds=rounds, sample_s=sample_s).medians()
    return {k: v * 1e3 for k, v in med.items()}


def pick(times: dict[str, float]) -> tuple[str, str, float]:
    """(fastest sparse variant, fastest dense variant, dense time over sparse time)."""
    sparse = [k for k in times if not is_dense(k)]
    dense = [k for k in times if is_dense(k)]
    if not sparse:
        raise ValueError(f"no sparse variant was timed among {sorted(times)}")
    best = min(sparse, key=times.__getitem__)
    ref = min(dense, key=times.__getitem__)
    return best, ref, times[ref] / times[best]

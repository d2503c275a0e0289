"""Data-parallel calibration over `torch.distributed` ranks.

Every rank runs the same program on its share of the calibration batches
(`Ranks.share`: whole joined groups, the same groups one process would run),
so it holds partial statistics. A weight belongs to one rank (round-robin in
solve order, `Ranks.assign`); its statistics are summed on that rank
(`reduce`, or `all_reduce` when weights of several owners read the same
activation, as q, k and v do), the owner solves it, and its new values and
mask are broadcast so every rank goes on with the same weights.

Equality with one process: statistics are float64 running sums of per-group
float32 partials (`activation_stats.Stats`) and are reduced in float64, so
the rounded float32 statistics, and hence masks and weights, are the
single-process ones bit for bit as long as each group's forward pass is
(same program, same inputs, same intra-op thread count: torchrun sets
OMP_NUM_THREADS=1, so compare with a one-thread single process). The sum of
a few float32 partials is exact in float64 unless they differ by more than
2^29 in magnitude; where it is not, an entry may differ by one float32 ulp.

Backend: ``nccl`` when CUDA is available, else ``gloo``. Launch with
``torchrun --nproc-per-node N -m sparsecc sparsify ... --distributed``.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.distributed as dist

from sparsecc.errors import UsageError

__all__ = ["Ranks", "DistributedError", "start_ranks", "world_from_env"]


class DistributedError(UsageError, RuntimeError):
    """The distributed run cannot start or its ranks disagree."""


def world_from_env() -> int:
    """The world size torchrun announced (``WORLD_SIZE``), 1 without one."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DistributedError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def start_ranks(timeout_s: float = 600.0) -> "Ranks":
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl with CUDA)."""
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise DistributedError(f"--distributed needs the environment torchrun sets ({', '.join(missing)} missing): "
                               "run `torchrun --nproc-per-node N -m sparsecc ...`")
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        except Exception as e:  # a bad address or port: say so, not a stack of c10d frames
            raise DistributedError(f"cannot join the process group at {os.environ['MASTER_ADDR']}:"
                                   f"{os.environ['MASTER_PORT']}: {e}") from e
    return Ranks()


@dataclass
class Ranks:
    """This process's place in the process group, and what it sent to the others."""

    rank: int = field(default_factory=lambda: dist.get_rank())
    world: int = field(default_factory=lambda: dist.get_world_size())
    owner_of: dict[str, int] = field(default_factory=dict)
    # One entry per collective: (label, op, payload bytes); see bench/bench_distributed.py.
    log: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        # nccl moves CUDA tensors only; gloo takes CPU tensors.
        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")

    def share(self, items: Sequence[Any]) -> list[Any]:
        """This rank's contiguous share of ``items`` (shares differ in length by at most one)."""
        n = len(items)
        return list(items[self.rank * n // self.world:(self.rank + 1) * n // self.world])

    def assign(self, fqns: Iterable[str]) -> None:
        """Owners, round-robin in the given (solve) order."""
        for i, f in enumerate(fqns):
            self.owner_of.setdefault(f, i % self.world)

    def owns(self, fqn: str) -> bool:
        return self.owner_of[fqn] == self.rank

    def reduce_stats(self, stats: Any, readers: Sequence[str], label: str) -> None:
        """Sum one `Stats` object over the ranks, onto the owners of ``readers`` (float64, in place)."""
        owners = sorted({self.owner_of[f] for f in readers})
        tensors = [t for t in (stats.act_sq, stats.hessian) if t is not None]
        rows = torch.tensor([float(stats.rows)], dtype=torch.float64)
        for t in [rows, *tensors]:
            self._sum(t, owners[0] if len(owners) == 1 else None, label)
        stats.rows = int(rows.item())
        stats._read = None

    def _sum(self, t: torch.Tensor, dst: int | None, label: str) -> None:
        buf = t.to(self.device)
        if dst is None:
            dist.all_reduce(buf)
        else:
            dist.reduce(buf, dst)
        if buf is not t:
            t.copy_(buf)
        self.log.append((label, "all_reduce" if dst is None else "reduce", t.numel() * t.element_size()))

    def broadcast(self, tensor: torch.Tensor | None, like: torch.Tensor, src: int, label: str) -> torch.Tensor:
        """``tensor`` from rank ``src`` (elsewhere pass None: a buffer shaped ``like`` is received)."""
        buf = (tensor if self.rank == src else torch.empty_like(like)).contiguous().to(self.device)
        dist.broadcast(buf, src)
        self.log.append((label, "broadcast", buf.numel() * buf.element_size()))
        return buf.cpu()

    def broadcast_flag(self, value: bool, src: int, label: str) -> bool:
        t = torch.tensor([1 if value else 0], dtype=torch.int32)
        return bool(self.broadcast(t, t, src, label).item())

    def barrier(self) -> None:
        dist.barrier()

    def close(self, wait: bool = True) -> None:
        """Wait for every rank (rank 0 may still be writing), then leave the group."""
        if dist.is_initialized():
            if wait:
                dist.barrier()
            dist.destroy_process_group()

    def comm_bytes(self) -> dict[str, int]:
        """Bytes sent per label (a weight or a statistics object), all collectives together."""
        out: dict[str, int] = {}
        for label, _, n in self.log:
            out[label] = out.get(label, 0) + n
        return out

"""Collect why XNNPACK's partitioner rejected each node.

The partitioner's rules call ``WhyNoPartition(node, reason)``, which only
logs at DEBUG level on the loggers under
``executorch.backends.xnnpack.partition``. While lowering, those loggers are
turned up to DEBUG with a filter that keeps the reasons (node name to
reason) and drops every DEBUG record, so nothing extra reaches the user's
log handlers. Levels and filters are restored afterwards.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator

from . import _deps

__all__ = ["capture_rejections", "PARTITION_LOGGER"]

PARTITION_LOGGER = "executorch.backends.xnnpack.partition"


class _Keep(logging.Filter):
    def __init__(self, why_type: type, out: dict[str, str], levels: dict[str, int]):
        super().__init__()
        self.why_type, self.out, self.levels = why_type, out, levels

    def filter(self, record: logging.LogRecord) -> bool:
        msg: Any = record.msg
        if isinstance(msg, self.why_type):
            # The reporter object is reused for the next node: read it now.
            if msg.node is not None:
                self.out[msg.node.name] = str(msg.reason)
            return False
        # Let through only what the logger would have emitted without us.
        return record.levelno >= self.levels.get(record.name, logging.WARNING)


@contextmanager
def capture_rejections() -> Iterator[dict[str, str]]:
    """Yield a dict that fills with ``{node name: reason}`` while lowering runs."""
    _deps.xnnpack_partitioner()  # make sure the partitioner's loggers exist
    why_type = _deps.exir_backend_utils().WhyNoPartition
    names = [PARTITION_LOGGER] + [
        n for n in logging.Logger.manager.loggerDict if n.startswith(PARTITION_LOGGER + ".")
    ]
    loggers = [logging.getLogger(n) for n in names]
    levels = {lg.name: lg.getEffectiveLevel() for lg in loggers}
    saved = [(lg, lg.level) for lg in loggers]
    out: dict[str, str] = {}
    keep = _Keep(why_type, out, levels)
    for lg in loggers:
        lg.addFilter(keep)
        lg.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        for lg, level in saved:
            lg.setLevel(level)
            lg.removeFilter(keep)

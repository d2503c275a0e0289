"""The ``sparsecc`` command line: one module per verb, registered on the app in `app.py`.

A new verb is one module here plus one import line below.
"""

# The import order is the order of `sparsecc --help`: look, prune, compile, measure.
from sparsecc.cli import inspect, sparsify, compile, bench, eval, sweep  # noqa: F401,I001  (register the verbs)
from sparsecc.cli import verify  # noqa: F401  (sparsecc verify BUNDLE)
from sparsecc.cli import recover  # noqa: F401  (sparsecc recover MODEL -r RECIPE)
from sparsecc.cli import prune_streamed  # noqa: F401  (sparsecc prune-streamed CHECKPOINT -o OUT)
from sparsecc.cli.app import app, main

__all__ = ["app", "main"]

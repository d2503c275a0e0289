"""Verification: the sparsity pattern in the graph, in each artifact, and output parity."""

__all__: list[str] = []

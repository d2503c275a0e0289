"""Orchestration only: sparsify, structured pruning, recovery, compile and sweeps, built from the
layers below."""

__all__: list[str] = []

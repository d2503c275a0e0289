"""The shared vocabulary of every stage: the sparsity IR, the program and its edits, the pass
infrastructure, capture with torch.export, analysis of prunable weights, machine facts."""

__all__: list[str] = []

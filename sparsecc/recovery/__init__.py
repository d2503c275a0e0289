"""Recovery after pruning: training or solving the kept weights (and masks) back towards the dense model."""

__all__: list[str] = []

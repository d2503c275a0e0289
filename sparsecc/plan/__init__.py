"""Planning: recipes, criteria, masks, calibration statistics and layer budgets (what becomes zero)."""

__all__: list[str] = []

"""`RecipeError`, below the recipe parser so that the option parsers it calls (budgets) can raise it."""

from __future__ import annotations

from typing import Any

from sparsecc.errors import UsageError

__all__ = ["RecipeError"]


class RecipeError(UsageError, ValueError):
    """A recipe is invalid. ``key`` is the dotted path of the value at fault."""

    def __init__(self, key: str, value: Any, message: str):
        super().__init__(f"recipe key '{key}': {value!r} {message}")
        self.key, self.value = key, value

"""Recovery after pruning: training or solving the kept weights (and masks) back towards the dense model.

`base` holds the interface (`RecoveryOptions`, `RecoveryResult`, the method
registry); each method module registers itself on import, so importing this
package makes every method available to `get_method`.
"""

import importlib as _importlib

from sparsecc.recovery.base import (
    RecoveryOptions,
    RecoveryResult,
    assert_zeros_kept,
    available_methods,
    get_method,
    masks_of,
    register_method,
)

# the built-in methods register on import; the learned-mask modules may not exist in every checkout
for _name in ("distill", "reconstruct", "block_tune", "learned_masks", "sr_ste"):
    try:
        _importlib.import_module(f"sparsecc.recovery.{_name}")
    except ModuleNotFoundError as _e:
        if _e.name != f"sparsecc.recovery.{_name}":
            raise

__all__ = ["RecoveryOptions", "RecoveryResult", "assert_zeros_kept", "available_methods", "get_method",
           "masks_of", "register_method"]

"""In-place class swap shared by the ARD layers: the module object, its Parameters, hooks and references stay.

Swapping ``module.__class__`` (as ``torch.nn.utils.parametrize`` does) rather than building a new module keeps
every reference the user, the optimizer and a DDP wrapper hold: the same object simply gains ARD behaviour, and
``revert`` gives back the original class with the trained values in the same Parameters. State dict keys never
change because no attribute holding a Parameter or buffer is touched.
"""

from __future__ import annotations

from torch import nn


def swap_class(module: nn.Module, base: type[nn.Module], target: type[nn.Module]) -> None:
    """Turn ``module`` (exactly of class ``base``) into ``target`` (a subclass of ``base``) in place."""
    if type(module) is target:
        return
    if type(module) is not base:
        raise TypeError(
            f"expected a module of exact type {base.__name__} to convert to {target.__name__}, got "
            f"{type(module).__name__}; subclasses may override forward and are left alone"
        )
    module.__class__ = target


def revert_class(module: nn.Module, base: type[nn.Module], attributes: tuple[str, ...]) -> None:
    """Give ``module`` back its class ``base`` and drop the ARD-only ``attributes``."""
    for name in attributes:
        module.__dict__.pop(name, None)
    module.__class__ = base

"""Saving and putting back a module instance's own attributes (its ``__dict__`` entries).

gcshim changes only instance attributes (``forward``, transformers' flags, a recurrent state
for the recompute) and must put each back exactly, including "it was not there".
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

ABSENT = object()  # the instance had no attribute of its own under that name


def take(module: nn.Module, name: str) -> Any:
    """The instance's own value of `name`, or ABSENT."""
    return module.__dict__.get(name, ABSENT)


def put_back(module: nn.Module, name: str, value: Any) -> None:
    """Make the instance's own `name` what `take` returned (removing it for ABSENT)."""
    if value is ABSENT:
        module.__dict__.pop(name, None)
    else:
        module.__dict__[name] = value


def deepcopy_taken(value: Any, memo: dict) -> Any:
    """Deep-copy a value `take` returned, keeping ABSENT itself."""
    return value if value is ABSENT else copy.deepcopy(value, memo)

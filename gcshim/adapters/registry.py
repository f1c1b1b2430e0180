"""The adapter table: user rows first, then the built-in families, then the generic adapter."""

from __future__ import annotations

import threading
from typing import List, Tuple

from torch import nn

from . import (
    hf_decoders,
    hf_encoders,
    hf_multimodal,
    hf_seq2seq,
    hf_vision,
    timm,
    torch_nn,
    torchvision,
)
from .base import GENERIC, Adapter

# One module per family; within a family, the narrower (version-gated) rows come first.
_BUILTIN: List[Adapter] = [
    *hf_multimodal.ROWS,
    *hf_decoders.ROWS,
    *hf_encoders.ROWS,
    *hf_seq2seq.ROWS,
    *hf_vision.ROWS,
    *torch_nn.ROWS,
    *timm.ROWS,
    *torchvision.ROWS,
]
_user_rows: List[Adapter] = []
_lock = threading.Lock()


def register_adapter(adapter: Adapter) -> Adapter:
    """Add a row that takes precedence over the built-in table; returns it."""
    if not isinstance(adapter, Adapter):
        raise TypeError(f"register_adapter expects a gcshim.Adapter, got {type(adapter).__name__}")
    if adapter.is_generic:
        raise ValueError(f"adapter {adapter.name!r} names no layer classes")
    with _lock:
        _user_rows.insert(0, adapter)
    return adapter


def unregister_adapter(adapter: Adapter) -> None:
    """Remove a row added with `register_adapter` (no error if it is not there)."""
    with _lock:
        if adapter in _user_rows:
            _user_rows.remove(adapter)


def adapter_rows() -> List[Adapter]:
    """The table in lookup order (user rows, then built-in rows)."""
    with _lock:
        return [*_user_rows, *_BUILTIN]


def find_adapter(module: nn.Module, ancestors: Tuple[str, ...] = ()) -> Adapter:
    """The first row that covers `module`'s class on the installed versions, else generic.

    ancestors: class names of the modules `module` sits in (rows may hold only inside some).
    """
    cls = type(module)
    for row in adapter_rows():
        if row.matches(cls, ancestors):
            return row
    return GENERIC


def has_specific_adapter(module: nn.Module) -> bool:
    """Whether the first table row that names this module's class has `auto=True`."""
    cls = type(module)
    for row in adapter_rows():
        if not row.within and row.matches(cls):
            return row.auto
    return False

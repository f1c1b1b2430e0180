"""The adapter table: user rows first, then the built-in families, then the generic adapter."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import weakref
from typing import Dict, List, Optional, Tuple

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
    versions,
)
from .row import GENERIC, Adapter

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
# class -> ancestors -> the rows that name it: lookups are per layer instance, and the rows
# change only on (un)register (the version gate is checked on each lookup)
_covering: weakref.WeakKeyDictionary[type, Dict[Tuple[str, ...], List[Adapter]]] = (
    weakref.WeakKeyDictionary())


def holds_for_installed_version(row: Adapter) -> bool:
    """Whether the row's version gate admits the installed package."""
    if row.package is None:
        return True
    version = versions.installed_version(row.package)
    return version is not None and row._specifier.contains(version, prereleases=True)


def covers(row: Adapter, cls: type, ancestors: Tuple[str, ...] = ()) -> bool:
    """Whether the row names `cls` (or a base class of it), whatever is installed.

    ancestors: class names of the modules the layer sits in (for `within` rows).
    """
    if row.is_generic:
        return True
    if row.within and not set(row.within).intersection(ancestors):
        return False
    if row.predicate is not None:
        return bool(row.predicate(cls))
    return any(
        klass.__name__ in row.classes
        and (row.module_prefix is None or klass.__module__.startswith(row.module_prefix))
        for klass in cls.__mro__
    )


def _canonical(value: object) -> str:
    if callable(value) and not isinstance(value, type):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', value)}"
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_canonical(item) for item in value) + "]"
    return repr(value)


def table_fingerprint(rows: Optional[List[Adapter]] = None) -> str:
    """A short hash of the built-in table's rows, field by field (what generated pages record:
    the table they were made with)."""
    rows = _BUILTIN if rows is None else rows
    text = "\n".join(
        ";".join(f"{f.name}={_canonical(getattr(row, f.name))}"
                 for f in sorted(dataclasses.fields(row), key=lambda f: f.name) if f.init)
        for row in rows)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def register_adapter(adapter: Adapter) -> Adapter:
    """Add a row that takes precedence over the built-in table; returns it."""
    if not isinstance(adapter, Adapter):
        raise TypeError(f"register_adapter expects a gcshim.Adapter, got {type(adapter).__name__}")
    if adapter.is_generic:
        raise ValueError(f"adapter {adapter.name!r} names no layer classes")
    with _lock:
        _user_rows.insert(0, adapter)
        _covering.clear()
    return adapter


def unregister_adapter(adapter: Adapter) -> None:
    """Remove a row added with `register_adapter` (no error if it is not there)."""
    with _lock:
        if adapter in _user_rows:
            _user_rows.remove(adapter)
            _covering.clear()


def adapter_rows() -> List[Adapter]:
    """The table in lookup order (user rows, then built-in rows)."""
    with _lock:
        return [*_user_rows, *_BUILTIN]


def find_adapter(module: nn.Module, ancestors: Tuple[str, ...] = ()) -> Adapter:
    """The first row that covers `module`'s class on the installed versions, else generic.

    ancestors: class names of the modules `module` sits in (rows may hold only inside some).
    """
    cls = type(module)
    with _lock:
        rows = _covering.get(cls, {}).get(ancestors)
    if rows is None:
        rows = [row for row in adapter_rows() if covers(row, cls, ancestors)]
        with _lock:
            _covering.setdefault(cls, {})[ancestors] = rows
    return next((row for row in rows if holds_for_installed_version(row)), GENERIC)


def has_specific_adapter(module: nn.Module) -> bool:
    """Whether the first table row that names this module's class has `auto=True`."""
    row = find_adapter(module)
    return row.auto and not row.is_generic

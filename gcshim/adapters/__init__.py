"""The adapter table (one row per architecture and version range) and the generic row."""

from .registry import (
    adapter_rows,
    covers,
    find_adapter,
    has_specific_adapter,
    holds_for_installed_version,
    register_adapter,
    unregister_adapter,
)
from .row import CACHE_ARGS, CACHE_FLAG, GENERIC, Adapter

__all__ = [
    "CACHE_ARGS",
    "CACHE_FLAG",
    "GENERIC",
    "Adapter",
    "adapter_rows",
    "covers",
    "find_adapter",
    "has_specific_adapter",
    "holds_for_installed_version",
    "register_adapter",
    "unregister_adapter",
]

"""The adapter table (one row per architecture) and the generic adapter."""

from .base import CACHE_ARGS, CACHE_FLAG, GENERIC, Adapter, CacheEdit, Signature
from .registry import (
    adapter_rows,
    find_adapter,
    has_specific_adapter,
    register_adapter,
    unregister_adapter,
)

__all__ = [
    "CACHE_ARGS",
    "CACHE_FLAG",
    "GENERIC",
    "Adapter",
    "CacheEdit",
    "Signature",
    "adapter_rows",
    "find_adapter",
    "has_specific_adapter",
    "register_adapter",
    "unregister_adapter",
]

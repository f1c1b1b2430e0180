"""Caches in a checkpointed call: which ones to keep, which to neutralise, how, and the
output's cache slot.

A cache argument (`past_key_value(s)`, `layer_past`, `cache`, as the layer's adapter row names
them) that holds something when the layer is called is one of its inputs: a learned prefix, a
past, a recurrent state. It is kept; what the call changes in it is put back for the recompute
(gcshim.core.side_channels). An empty one only collects keys for generation: it is set to None
and the flag (`use_cache`) to False for the call; where that drops a cache slot from a tuple
output, the slot is put back with the cache passed in, so callers that index ``outputs[1]``
keep working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from ..adapters import Adapter
from . import hooks
from .signature import Signature


def returns_cache(layer_type: type) -> bool:
    """Whether a layer's tuple output may hold its cache (a framework may say its layers no
    longer return one); code outside any framework: yes."""
    for framework in hooks.frameworks():
        answer = framework.returns_cache(layer_type)
        if answer is not None:
            return answer
    return True


def is_legacy_cache(value: Any) -> bool:
    """None, or a tuple (of tuples) of tensors: a cache the layer cannot change in place, so
    the recompute sees what the forward saw and the layer's output keeps its own layout."""
    if value is None:
        return True
    return type(value) is tuple and all(
        is_legacy_cache(item) or type(item).__name__ in ("Tensor", "Parameter") for item in value)


def holds_content(cache: Any) -> bool:
    """Whether a cache argument holds something (past keys/values, a state): what a caller
    passes on purpose. An empty cache object, made because config.use_cache is on, does not."""
    if cache is None:
        return False
    if isinstance(cache, torch.Tensor):
        return cache.numel() > 0
    if type(cache) in (tuple, list):
        return any(holds_content(item) for item in cache)
    length = getattr(cache, "get_seq_length", None)
    if callable(length):
        try:
            return int(length()) > 0
        except Exception:  # a cache type that cannot say: take it as holding something
            return True
    return True


def holds_input(
    adapter: Adapter, signature: Signature, args: Tuple[Any, ...], kwargs: Dict[str, Any]
) -> bool:
    """Whether a cache argument of this call holds something: then it is the layer's input
    (a learned prefix, a past, a recurrent state), kept as it is; an empty one is neutralised."""
    return any(holds_content(signature.locate(name, args, kwargs)[1])
               for name in adapter.cache_args)


def kinds(
    adapter: Adapter, signature: Signature, args: Tuple[Any, ...], kwargs: Dict[str, Any]
) -> str:
    """The cache arguments of this call that hold something, with their types (for errors)."""
    found = []
    for name in adapter.cache_args:
        value = signature.locate(name, args, kwargs)[1]
        if holds_content(value):
            found.append(f"{name}: {type(value).__module__}.{type(value).__qualname__}")
    return ", ".join(found)


def input_needs_grad(
    adapter: Adapter, signature: Signature, args: Tuple[Any, ...], kwargs: Dict[str, Any]
) -> bool:
    """Whether a cache argument of this call holds a tensor that requires grad (a learned
    prefix: the layer is not frozen even where its other inputs and parameters are)."""
    from .side_channels import tensors_in

    return any(tensor.requires_grad for name in adapter.cache_args
               for tensor in tensors_in(signature.locate(name, args, kwargs)[1], modules=True))


@dataclass(frozen=True)
class CacheEdit:
    """What gcshim changed in one call, and what it needs to restore the output's shape."""

    changed: Tuple[str, ...]
    flag_dropped: bool
    cache_name: Optional[str]
    passed_cache: Any
    argument: Callable[[str], Any]


def carries_cache(
    adapter: Adapter, signature: Signature, args: Tuple[Any, ...], kwargs: Dict[str, Any]
) -> bool:
    return any(signature.locate(name, args, kwargs)[1] is not None for name in adapter.cache_args)


def neutralise_caches(
    adapter: Adapter, signature: Signature, args: Tuple[Any, ...], kwargs: Dict[str, Any]
) -> Tuple[Tuple[Any, ...], Dict[str, Any], Optional[CacheEdit]]:
    """Return args/kwargs with caches off, and what was changed (None if nothing)."""

    def argument(name: str) -> Any:
        return signature.locate(name, args, kwargs)[1]

    new_args, new_kwargs = args, kwargs
    changed = []
    cache_name, passed_cache = None, None
    for name in adapter.cache_args:
        where, value = signature.locate(name, args, kwargs)
        if cache_name is None and (where is not None or name in signature.positions):
            cache_name, passed_cache = name, value
        if where is not None and value is not None:
            new_args, new_kwargs = signature.replace(name, new_args, new_kwargs, None)
            changed.append(f"{name}=None")
    flag_dropped = False
    if adapter.cache_flag and argument(adapter.cache_flag):
        # (where the default is True, False is passed by keyword)
        flag_dropped = True
        changed.append(f"{adapter.cache_flag}=False")
        new_args, new_kwargs = signature.replace(adapter.cache_flag, new_args, new_kwargs, False)
    if not changed:
        return args, kwargs, None
    edit = CacheEdit(tuple(changed), flag_dropped, cache_name, passed_cache, argument)
    return new_args, new_kwargs, edit


def restore_output(adapter: Adapter, output: Any, edit: Optional[CacheEdit]) -> Any:
    """Put the cache slot back into a tuple output whose caller asked for a cache.

    The slot gets the cache the caller passed in (not updated), so code that collects or
    converts it keeps working; a layer that returns a single tensor is left as it is. A layer
    with no `use_cache` switch returns its slot anyway, holding the None gcshim passed: the
    caller's cache goes there.
    """
    if edit is None or type(output) is not tuple:
        return output
    slot = adapter.cache_slot
    if callable(slot):
        slot = slot(edit.argument)
    if slot == "auto":
        slot = 1 if edit.cache_name == "layer_past" else "append"
    if not edit.flag_dropped:
        # No use_cache switch (GIT's layers on 4.4x-4.5x): the layer returns its cache slot at
        # every call, last or where its row says, and holds there the None it was passed
        at = len(output) - 1 if slot in ("append", "last") else slot
        if edit.passed_cache is None or not 0 <= at < len(output) or output[at] is not None:
            return output
        return output[:at] + (edit.passed_cache,) + output[at + 1:]
    if slot == "append":
        return output + (edit.passed_cache,)
    if slot == "last":
        return output[:-1] + (edit.passed_cache,)
    return output[:slot] + (edit.passed_cache,) + output[slot:]

"""Flatten nested call arguments and outputs into a flat tuple of tensors, and back.

Reentrant checkpointing only sees tensors passed positionally at the top level, and torch only
stashes device RNG state for those. Flattening every tensor, wherever the caller put it
(keyword, tuple, list, dict), into one positional tuple fixes both.
Containers opened: tuple, list, dict, OrderedDict, namedtuple, and dataclass instances (such as
transformers' ModelOutput), rebuilt through their constructor. Anything else is a leaf.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch


class _Slot:
    """Placeholder for the i-th tensor in a skeleton."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def _is_namedtuple(obj: Any) -> bool:
    return isinstance(obj, tuple) and hasattr(type(obj), "_fields")


def _map_leaves(node: Any, leaf: Callable[[Any], Any]) -> Any:
    """Copy the plain containers in `node`, replacing every leaf by `leaf(leaf_value)`."""
    kind = type(node)
    if kind is tuple or kind is list:
        return kind(_map_leaves(item, leaf) for item in node)
    if _is_namedtuple(node):
        return kind(*(_map_leaves(item, leaf) for item in node))
    if kind is dict or kind is OrderedDict:
        return kind((key, _map_leaves(value, leaf)) for key, value in node.items())
    if isinstance(node, (_Slot, torch.Tensor)):  # the usual leaves, decided at once
        return leaf(node)
    # not dataclasses.is_dataclass: torch.compile before 2.5 cannot trace it
    if hasattr(kind, "__dataclass_fields__") and not isinstance(node, type):
        changes = {
            f.name: _map_leaves(getattr(node, f.name), leaf)
            for f in dataclasses.fields(node)
            if f.init
        }
        return dataclasses.replace(node, **changes)
    return leaf(node)


def map_tensors(node: Any, function: Callable[[torch.Tensor], Any]) -> Any:
    """`node` with its plain containers copied and each tensor replaced by `function(tensor)`."""
    return _map_leaves(node, lambda leaf: function(leaf) if isinstance(leaf, torch.Tensor)
                       else leaf)


class _Call:
    """The skeleton of a call whose arguments are all positional tensors (the fast path)."""

    __slots__ = ()


TENSORS_ONLY = _Call()  # the skeleton of a call of tensors by position only


def flatten_call(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Tuple[List[torch.Tensor], Any]:
    """`flatten((args, kwargs))`, quicker for the most common call: tensors, by position."""
    if not kwargs:
        for arg in args:
            if type(arg) is not torch.Tensor and type(arg) is not torch.nn.Parameter:
                break
        else:
            return list(args), TENSORS_ONLY
    return flatten((args, kwargs))


def unflatten_call(skeleton: Any, tensors: Sequence[torch.Tensor]
                   ) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    """The (args, kwargs) that `flatten_call` took apart."""
    if isinstance(skeleton, _Call):  # not `is`: torch.compile before 2.5 cannot trace that here
        return tuple(tensors), {}
    return unflatten(skeleton, tensors)


def flatten(obj: Any) -> Tuple[List[torch.Tensor], Any]:
    """Return the tensors found in `obj` (depth first) and a skeleton to rebuild it."""
    tensors: List[torch.Tensor] = []

    def take(node: Any) -> Any:
        if isinstance(node, torch.Tensor):
            tensors.append(node)
            return _Slot(len(tensors) - 1)
        return node

    skeleton = _map_leaves(obj, take)
    return tensors, skeleton


def unflatten(skeleton: Any, tensors: Sequence[torch.Tensor]) -> Any:
    """Rebuild the structure recorded by `flatten`, filling in `tensors`."""

    def fill(node: Any) -> Any:
        return tensors[node.index] if isinstance(node, _Slot) else node

    return _map_leaves(skeleton, fill)

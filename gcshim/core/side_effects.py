"""What running a layer's forward a second time (the recompute) must not change.

- ``is_recomputing()`` tells user code that the forward it is in is a recompute.
- Buffers that the first forward updated (BatchNorm's running statistics, an EMA, a step
  counter) are put back after the recompute, so one training step updates them once, as an
  un-checkpointed step would.
- Attributes an adapter names in ``module_state`` (a layer that reassigns state in forward) are
  replayed from the value the first forward started with.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, List, Tuple

import torch
from torch import nn

from .attrs import put_back, take

_local = threading.local()


def is_recomputing() -> bool:
    """True inside a checkpointed layer's recompute (in the thread running it)."""
    return getattr(_local, "depth", 0) > 0


class _Recomputing:
    """`with RECOMPUTING:` marks this thread as inside a recompute (a plain class: it runs
    on every recompute, and generator context managers cost more)."""

    __slots__ = ()

    def __enter__(self) -> None:
        _local.depth = getattr(_local, "depth", 0) + 1

    def __exit__(self, *exc: Any) -> None:
        _local.depth -= 1


RECOMPUTING = _Recomputing()  # `with RECOMPUTING:` around a recompute


def maybe(context: Any) -> Any:
    """`context`, or a context that does nothing for None."""
    return context if context is not None else contextlib.nullcontext()


# -- buffers --------------------------------------------------------------------------------
BufferEntry = Tuple[nn.Module, str, torch.Tensor, int]


def _version(tensor: torch.Tensor) -> int:
    try:
        return tensor._version
    except RuntimeError:  # inference tensors keep no version counter; they can't change
        return -1


def watch_buffers(module: nn.Module) -> List[BufferEntry]:
    """Each buffer under `module`, with its version before a forward."""
    if not module._modules and not module._buffers:  # a leaf without buffers: the usual
        return []
    return [
        (owner, name, buffer, _version(buffer))
        for owner in module.modules()
        for name, buffer in owner._buffers.items()
        if buffer is not None
    ]


def _updates_stats_in_kernel(module: nn.Module) -> bool:
    # BatchNorm/InstanceNorm kernels write running_mean/var without bumping their version.
    return (isinstance(module, nn.modules.batchnorm._NormBase) and module.training
            and module.track_running_stats)


def changed_buffers(watched: List[BufferEntry]) -> List[Tuple[nn.Module, str]]:
    """The buffers that the forward since `watch_buffers` may have changed: those updated in
    place or reassigned, every buffer of a module that changed one (a kernel may have written
    the others unseen), and normalisation running statistics."""
    if not watched:
        return []
    owners = {
        id(owner)
        for owner, name, buffer, version in watched
        if owner._buffers.get(name) is not buffer or _version(buffer) != version
        or _updates_stats_in_kernel(owner)
    }
    return [(owner, name) for owner, name, _buffer, _version in watched if id(owner) in owners]


@contextlib.contextmanager
def buffers_kept(changed: List[Tuple[nn.Module, str]]) -> Iterator[None]:
    """The block runs on copies of the `changed` buffers; the originals come back untouched.

    Swapping objects instead of copying values back leaves the originals' version counters
    alone, and the recompute's own graph keeps the copies it saved (reentrant backward).
    """
    saved = [(owner, name, owner._buffers.get(name)) for owner, name in changed]
    with torch.no_grad():
        for owner, name, buffer in saved:
            if buffer is not None:
                owner._buffers[name] = buffer.clone()
    try:
        yield
    finally:
        for owner, name, buffer in saved:
            owner._buffers[name] = buffer


# -- module state named by the adapter ------------------------------------------------------
StateSnapshot = List[Tuple[nn.Module, str, Any]]


def snapshot_state(module: nn.Module, names: Tuple[str, ...]) -> StateSnapshot:
    """The current values (references) of `names` on `module` and its submodules."""
    return [(m, name, take(m, name)) for m in module.modules() for name in names]


def restore_state(snapshot: StateSnapshot) -> None:
    for m, name, value in snapshot:
        put_back(m, name, value)


@contextlib.contextmanager
def state_replayed(module: nn.Module, names: Tuple[str, ...], before: StateSnapshot
                   ) -> Iterator[None]:
    """Run the block from the state `before`, then go back to the state found now."""
    if not before:
        yield
        return
    after = snapshot_state(module, names)
    restore_state(before)
    try:
        yield
    finally:
        restore_state(after)

"""What running a layer's forward a second time (the recompute) must not change.

- ``is_recomputing()`` tells user code that the forward it is in is a recompute.
- Buffers that the first forward updated (BatchNorm's running statistics, an EMA, a step
  counter) are put back after the recompute, so one training step updates them once, as an
  un-checkpointed step would; the recompute reads them as the forward did (I-BERT's
  quantisation ranges steer its forward).
- Attributes an adapter names in ``module_state`` (a layer that reassigns state in forward) are
  replayed from the value the first forward started with.
"""

from __future__ import annotations

import contextlib
import sys
from types import CodeType, FrameType
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .attrs import put_back, take

# Where a recompute runs: the code objects of the functions that run one, each with the name of
# its local that is true while it does ("": always). is_recomputing() looks for them on the
# calling thread's stack, so the call path pays nothing for it (a thread-local counter, kept up
# in every recompute, cost about a quarter of the wrapper's overhead per layer call).
_RECOMPUTE_FRAMES: Dict[CodeType, str] = {}


def is_recomputing() -> bool:
    """True inside a checkpointed layer's recompute (in the thread running it). It walks the
    calling thread's stack: call it where a side effect must not repeat, not in a hot loop."""
    frame: Optional[FrameType] = sys._getframe(1)
    while frame is not None:
        flag = _RECOMPUTE_FRAMES.get(frame.f_code)
        if flag is not None and (not flag or frame.f_locals.get(flag)):
            return True
        frame = frame.f_back
    return False


def mark_recompute_frames(outer: Callable[..., Any], name: str, flag: str) -> None:
    """The function `name` defined inside `outer` runs recomputes: its frames are one while
    their local `flag` is true."""
    inner = [code for code in outer.__code__.co_consts
             if isinstance(code, CodeType) and code.co_name == name]
    if len(inner) != 1 or flag not in inner[0].co_varnames:
        raise LookupError(f"{outer.__qualname__} defines no one {name}() with a local {flag}")
    _RECOMPUTE_FRAMES[inner[0]] = flag


def as_recompute(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)`, with is_recomputing() true inside it."""
    return function(*args, **kwargs)


_RECOMPUTE_FRAMES[as_recompute.__code__] = ""


def maybe(context: Any) -> Any:
    """`context`, or a context that does nothing for None."""
    return context if context is not None else contextlib.nullcontext()


# -- buffers --------------------------------------------------------------------------------
BufferEntry = Tuple[nn.Module, str, torch.Tensor, int]


COPY_LIMIT = 1 << 20  # bytes: larger buffers (rotary tables) are watched, not copied


def nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def small(tensor: torch.Tensor) -> bool:
    return nbytes(tensor) <= COPY_LIMIT


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


def written_in_place(watched: List[BufferEntry]) -> FrozenSet[Tuple[int, str]]:
    """The buffers (owner's id, name) that the forward since `watch_buffers` wrote into, other
    than running statistics (which a training forward writes but does not read): the ones a
    later recompute needs a copy of, taken before the forward."""
    return frozenset(
        (id(owner), name) for owner, name, buffer, version in watched
        if owner._buffers.get(name) is buffer and _version(buffer) != version
        and not _updates_stats_in_kernel(owner))


def copies_before(watched: List[BufferEntry], keys: Optional[FrozenSet[Tuple[int, str]]]
                  ) -> Dict[int, torch.Tensor]:
    """Copies of the watched buffers named by `keys` (None: every buffer up to COPY_LIMIT),
    by the buffer's id, taken before a forward that may write into them."""
    if keys is not None and not keys:
        return {}
    with torch.no_grad():
        return {
            id(buffer): buffer.clone() for owner, name, buffer, _version in watched
            if ((id(owner), name) in keys if keys is not None else small(buffer))
        }


BufferRun = Tuple[nn.Module, str, torch.Tensor]


def changed_buffers(watched: List[BufferEntry], copies: Optional[Dict[int, torch.Tensor]] = None
                    ) -> List[BufferRun]:
    """The buffers that the forward since `watch_buffers` may have changed: those updated in
    place or reassigned, every buffer of a module that changed one (a kernel may have written
    the others unseen), and normalisation running statistics. Each comes with the value its
    recompute must read: the one the forward read (the buffer object itself where the forward
    only reassigned it, a copy from `copies` where it wrote into it), else the value now."""
    if not watched:
        return []
    owners = {
        id(owner)
        for owner, name, buffer, version in watched
        if owner._buffers.get(name) is not buffer or _version(buffer) != version
        or _updates_stats_in_kernel(owner)
    }
    copies = copies or {}
    changed = []
    for owner, name, buffer, version in watched:
        if id(owner) not in owners:
            continue
        now = owner._buffers.get(name)
        if now is not buffer and _version(buffer) == version:
            found = buffer  # reassigned: the object the forward read is untouched
        else:
            found = copies.get(id(buffer), now)
        changed.append((owner, name, found))
    return changed


@contextlib.contextmanager
def buffers_kept(changed: Sequence[BufferRun]) -> Iterator[None]:
    """The block runs on copies of the given values of the `changed` buffers; the originals
    come back untouched.

    Swapping objects instead of copying values back leaves the originals' version counters
    alone, and the recompute's own graph keeps the copies it saved (reentrant backward).
    """
    saved = [(owner, name, owner._buffers.get(name)) for owner, name, _value in changed]
    with torch.no_grad():
        for owner, name, value in changed:
            if value is not None:
                owner._buffers[name] = value.clone()
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

"""A pickled, copied or deep-copied applied model is the plain model it was before `apply`.

gcshim changes only instance attributes (a layer's ``forward``, transformers' flags). While a
module carries such a change it also carries a `PlainState` as its own ``__getstate__``, which
pickle, ``copy.copy`` and ``copy.deepcopy`` call: it hands them the module's attributes as they
were before gcshim, read from gcshim's live objects (the wrapper's saved forward, the flags saved
beside gcshim's checkpoint function), so a file made by ``torch.save`` loads as a plain model
where gcshim is not installed, and a copy is never half-patched. The hook goes when the last
change is undone.

``with gcshim.keep_on_copy(): twin = copy.deepcopy(model)`` keeps gcshim on the deep copy (its
own patches, removable on their own). Pickles always load plain: apply gcshim after loading.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
import weakref
from typing import Any, Dict, Iterator

from torch import nn

from ._attrs import ABSENT, deepcopy_taken

HOOK = "__getstate__"
NOT_SWITCHED = object()  # PlainState.flag_before when gcshim has not switched the flag off
_keeping = threading.local()


@contextlib.contextmanager
def keep_on_copy() -> Iterator[None]:
    """Deep copies made inside the block keep gcshim's patches (see the module notes)."""
    before = getattr(_keeping, "on", False)
    _keeping.on = True
    try:
        yield
    finally:
        _keeping.on = before


class PlainState:
    """The ``__getstate__`` of a module gcshim has changed."""

    __slots__ = ("_module", "flag_before")

    def __init__(self, module: nn.Module) -> None:
        self._module = weakref.ref(module)
        # transformers' flag before gcshim switched it off here (ABSENT: not switched off)
        self.flag_before: Any = NOT_SWITCHED

    def __call__(self) -> Any:
        module = self._module()
        # the class's own (nn.Module has one from torch 2.0 on; object's from Python 3.11)
        class_getstate = getattr(type(module), "__getstate__", None)
        state = class_getstate(module) if class_getstate is not None else dict(vars(module))
        if getattr(_keeping, "on", False) or not isinstance(state, dict):
            return state
        return plain_state(state, self.flag_before)

    def __deepcopy__(self, memo: Dict[int, Any]) -> PlainState:
        # only reached under keep_on_copy(): the hook follows the copied module
        module = self._module()
        twin = PlainState(memo.get(id(module), module))
        twin.flag_before = (self.flag_before if self.flag_before is NOT_SWITCHED
                            else deepcopy_taken(self.flag_before, memo))
        return twin

    def __reduce__(self) -> Any:
        raise pickle.PicklingError(
            "gcshim.keep_on_copy() keeps gcshim on deep copies only; a saved model loads "
            "plain: save outside the block and apply gcshim after loading")



def plain_state(state: Dict[str, Any], flag_before: Any = NOT_SWITCHED) -> Dict[str, Any]:
    """`state` (a module's __dict__ copy) with gcshim's changes undone."""
    from .hf_flags import FLAG, FUNC, PassThrough
    from .patch import CheckpointedForward

    state = dict(state)
    state.pop(HOOK, None)
    forward = state.get("forward")
    if isinstance(forward, CheckpointedForward):
        _put(state, "forward", forward._self_gcshim_previous)
    if flag_before is not NOT_SWITCHED and state.get(FLAG) is False:
        _put(state, FLAG, flag_before)
    passthrough = state.get(FUNC)
    if isinstance(passthrough, PassThrough) and passthrough.saved is not None:
        for name, value in passthrough.saved:
            _put(state, name, value)
    return state


def _put(state: Dict[str, Any], name: str, value: Any) -> None:
    if value is ABSENT:
        state.pop(name, None)
    else:
        state[name] = value


def hook_of(module: nn.Module) -> PlainState:
    """The module's PlainState, put on it if it has none yet."""
    hook = module.__dict__.get(HOOK)
    if not isinstance(hook, PlainState):
        hook = module.__dict__[HOOK] = PlainState(module)
    return hook


def drop_if_plain(module: nn.Module) -> None:
    """Take the hook off once nothing of gcshim's is left on the module."""
    hook = module.__dict__.get(HOOK)
    if not isinstance(hook, PlainState):
        return
    state = {name: value for name, value in module.__dict__.items() if name != HOOK}
    plain = plain_state(state, hook.flag_before)
    if plain.keys() == state.keys() and all(plain[name] is state[name] for name in state):
        del module.__dict__[HOOK]

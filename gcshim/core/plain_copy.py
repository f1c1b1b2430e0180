"""A pickled, copied or deep-copied applied model is the plain model it was before `apply`.

gcshim changes only instance attributes (a layer's ``forward``, a framework's flags). While a
module carries such a change it also carries a `PlainState` as its own ``__getstate__``, which
pickle, ``copy.copy`` and ``copy.deepcopy`` call: it hands them the module's attributes as they
were before gcshim, read from gcshim's live objects (the wrapper's saved forward, what each
framework saved beside its marks, the attributes remembered here), so a file made by
``torch.save`` loads as a plain model where gcshim is not installed, and a copy is never
half-patched. The hook goes when the last change is undone.

``with gcshim.keep_on_copy(): twin = copy.deepcopy(model)`` keeps gcshim on the deep copy (its
own patches, removable on their own). Pickles always load plain: apply gcshim after loading.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
import weakref
from typing import Any, Dict, Iterator, Tuple

from torch import nn

from . import hooks
from .attrs import ABSENT, deepcopy_taken

HOOK = "__getstate__"
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

    __slots__ = ("_module", "remembered")

    def __init__(self, module: nn.Module) -> None:
        self._module = weakref.ref(module)  # weak: no reference cycle through the module
        # attribute -> (its value before gcshim, the value gcshim set): while the attribute
        # still holds gcshim's value, a copy gets the one before
        self.remembered: Dict[str, Tuple[Any, Any]] = {}

    def __call__(self) -> Any:
        module = self._module()
        # the class's own (nn.Module has one from torch 2.0 on; object's from Python 3.11)
        class_getstate = getattr(type(module), "__getstate__", None)
        state = class_getstate(module) if class_getstate is not None else dict(vars(module))
        if getattr(_keeping, "on", False) or not isinstance(state, dict):
            return state
        return plain_state(state, self.remembered)

    def __deepcopy__(self, memo: Dict[int, Any]) -> PlainState:
        # only reached under keep_on_copy(): the hook follows the copied module
        module = self._module()
        twin = PlainState(memo.get(id(module), module))
        twin.remembered = {name: (deepcopy_taken(before, memo), deepcopy_taken(value, memo))
                           for name, (before, value) in self.remembered.items()}
        return twin

    def __reduce__(self) -> Any:
        raise pickle.PicklingError(
            "gcshim.keep_on_copy() keeps gcshim on deep copies only; a saved model loads "
            "plain: save outside the block and apply gcshim after loading")


def plain_state(state: Dict[str, Any], remembered: Dict[str, Tuple[Any, Any]]) -> Dict[str, Any]:
    """`state` (a copy of a module's __dict__) with gcshim's changes undone."""
    from .patching import CheckpointedForward

    state = dict(state)
    state.pop(HOOK, None)
    forward = state.get("forward")
    if isinstance(forward, CheckpointedForward):
        put_in_state(state, "forward", forward._self_gcshim_previous)
    for name, (before, value) in remembered.items():
        if state.get(name, ABSENT) is value:
            put_in_state(state, name, before)
    for framework in hooks.frameworks():
        framework.plain_state(state)
    return state


def put_in_state(state: Dict[str, Any], name: str, value: Any) -> None:
    """`attrs.put_back` for a module's state dict (ABSENT: the name goes)."""
    if value is ABSENT:
        state.pop(name, None)
    else:
        state[name] = value


def hook_of(module: nn.Module) -> PlainState:
    """The module's PlainState, put on it if it has none yet (before gcshim changes it)."""
    hook = module.__dict__.get(HOOK)
    if not isinstance(hook, PlainState):
        hook = module.__dict__[HOOK] = PlainState(module)
    return hook


def remember(module: nn.Module, name: str, before: Any, value: Any) -> None:
    """gcshim is about to set attribute `name` to `value`; a copy gets `before` instead."""
    hook_of(module).remembered[name] = (before, value)


def forget(module: nn.Module, name: str = "") -> None:
    """A change was undone (`name`, if remembered here); the hook goes once nothing of
    gcshim's is left on the module."""
    from .patching import CheckpointedForward

    hook = module.__dict__.get(HOOK)
    if not isinstance(hook, PlainState):
        return
    hook.remembered.pop(name, None)
    if hook.remembered or isinstance(module.__dict__.get("forward"), CheckpointedForward):
        return
    if any(framework.marked(module) for framework in hooks.frameworks()):
        return
    del module.__dict__[HOOK]

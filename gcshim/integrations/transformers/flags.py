"""transformers' view of checkpointing, kept consistent while gcshim checkpoints its layers.

Trainer, PEFT and TRL read ``model.is_gradient_checkpointing`` (``is_activation_checkpointing``
on 5.24), which is true when any submodule has ``gradient_checkpointing`` set. gcshim sets that
flag on each layer it checkpoints, with a `PassThrough` as the layer's
``_gradient_checkpointing_func``: transformers' own branch on the layer
(``GradientCheckpointingLayer`` since 4.52) then just calls through to gcshim's wrapper, which
checkpoints once. Stack modules (``LlamaModel``, ``T5Stack``, ...) are not flagged, because
their checkpoint branch is broken on some releases (UMT5, Pix2Struct); only on 4.53-4.x, where
the layer's own ``__call__`` turns ``use_cache`` off, are the stacks above flagged too.

transformers is never imported here: models are recognised by their attributes.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Dict, List, Optional, Tuple

from torch import nn

from ...adapters import CACHE_ARGS
from ...core import plain_copy
from ...core.attrs import deepcopy_taken, put_back, take
from ...core.caches import holds_content
from ...core.torch_checkpoint import CheckpointOptions, is_compiling

FLAG = "gradient_checkpointing"
FUNC = "_gradient_checkpointing_func"

# (attribute, what the instance __dict__ held before: a value or ABSENT)
Saved = List[Tuple[str, Any]]


class PassThrough:
    """transformers' checkpoint function on a gcshim layer: gcshim checkpoints inside, so call."""

    __slots__ = ("options", "saved")

    def __init__(self, options: CheckpointOptions, saved: Optional[Saved] = None) -> None:
        self.options = options
        # the layer's flags before gcshim marked it: a copy or pickle of it gets these back
        self.saved = saved

    def __deepcopy__(self, memo: dict) -> PassThrough:
        # (a deep copy that keeps gcshim: see gcshim.plain_copy) the same options, and the
        # copied layer's own saved flags
        saved = None if self.saved is None else [
            (name, deepcopy_taken(value, memo)) for name, value in self.saved]
        return PassThrough(self.options, saved)

    def __call__(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    def __reduce__(self) -> Any:
        # A saved model loads where gcshim was never imported: transformers' own checkpointing,
        # with the same options, stands in (the flag that is saved with it says it is on).
        from torch.utils.checkpoint import checkpoint

        return functools.partial(checkpoint, **self.options.as_kwargs()).__reduce__()


def _passes_filled_cache(frame: Any) -> bool:
    """Whether the code reading a flag in `frame` has a cache holding something to pass on (a
    local of a cache argument's name, or one in its `kwargs`)."""
    local = frame.f_locals
    found = [local.get(name) for name in CACHE_ARGS]
    passed = local.get("kwargs")
    if type(passed) is dict:
        found += [passed.get(name) for name in CACHE_ARGS]
    return any(holds_content(cache) for cache in found if cache is not None)


class Flag:
    """gcshim's value for a layer's `gradient_checkpointing` flag: true, except to code about
    to pass a cache holding something (a learned prefix, a past, a recurrent state).

    transformers drops the caches of a flagged layer's call (``GradientCheckpointingLayer``,
    4.53+) and checkpoints the calls of flagged stacks with its own caching off (before); a
    filled cache is the layer's input, and dropping it changes what the layer computes. Read
    as false there, the layer runs as it is and gcshim's wrapper checkpoints it, cache kept.
    Everywhere else (``model.is_gradient_checkpointing``, Trainer, PEFT) it reads true.
    """

    __slots__ = ()

    def __bool__(self) -> bool:
        if is_compiling():  # traced: no frames to read (a compiled step drops such a cache)
            return True
        return not _passes_filled_cache(sys._getframe(1))

    def __repr__(self) -> str:
        return "gcshim.Flag(True)"

    def __reduce__(self) -> Any:
        return (bool, (True,))  # a saved model loads where gcshim is absent: plain True


ON = Flag()


def is_transformers_model(module: nn.Module) -> bool:
    """A transformers PreTrainedModel (read from the class, so no deprecated property runs)."""
    return any("is_gradient_checkpointing" in vars(klass) for klass in type(module).__mro__)


def defined_in_transformers(cls: type) -> bool:
    """A class of transformers' own, not a subclass or copy of one in other code."""
    return cls.__module__.startswith("transformers.")


def is_transformers_layer(module: nn.Module) -> bool:
    """An instance of transformers' GradientCheckpointingLayer (4.52+): the layers transformers
    itself means to checkpoint, in its own models and in code that subclasses them."""
    return any(klass.__name__ == "GradientCheckpointingLayer"
               and klass.__module__.startswith("transformers.")
               for klass in type(module).__mro__[1:])


def transformers_checkpoints(module: nn.Module) -> bool:
    """Whether transformers' own checkpointing is switched on for this module (not by gcshim)."""
    # Looked up without nn.Module.__getattr__ (it raises for a missing name): on every call.
    flag = module.__dict__.get(FLAG, getattr(type(module), FLAG, False))
    if flag is not True and flag is not ON:
        return False
    return not isinstance(getattr(module, FUNC, None), PassThrough)


def should_mark(layer: nn.Module, owner: nn.Module) -> bool:
    """Flag layers of transformers models, and layers whose class reads the flag itself."""
    return is_transformers_model(owner) or hasattr(type(layer), FLAG)


def mark(layer: nn.Module, options: CheckpointOptions) -> Saved:
    """Flag `layer` as checkpointed (by gcshim); returns what `unmark` needs."""
    saved = [(name, take(layer, name)) for name in (FLAG, FUNC)]
    plain_copy.hook_of(layer)  # first: a copy made at any point after this is plain
    layer.__dict__[FUNC] = PassThrough(options, saved)
    layer.__dict__[FLAG] = ON
    return saved


def unmark(layer: nn.Module, saved: Saved) -> None:
    """Undo `mark`, unless transformers has since taken the flags over (then leave them)."""
    if isinstance(layer.__dict__.get(FUNC), PassThrough):
        for name, value in saved:
            put_back(layer, name, value)
    plain_copy.forget(layer)


def stacks_to_mark(model: nn.Module, layer_paths: List[str]) -> List[nn.Module]:
    """Stacks above the layers whose flag must be on too, on transformers 4.53 to 4.x.

    There `GradientCheckpointingLayer.__call__` turns `use_cache` off inside a flagged layer
    before gcshim's wrapper sees it, while old-style stacks still index the layer's cache slot
    unless their own flag told them to turn caching off for the whole stack.
    """
    from packaging.version import Version

    from ...adapters import versions

    version = versions.installed_version("transformers")
    if version is None or not Version("4.53") <= version < Version("5"):
        return []
    stacks: List[nn.Module] = []
    for path in layer_paths:
        if not hasattr(type(model.get_submodule(path)), FLAG):
            continue  # not a GradientCheckpointingLayer: nothing drops use_cache before gcshim
        parts = path.split(".")
        for depth in range(len(parts)):
            above = model.get_submodule(".".join(parts[:depth]))
            has_flag = FLAG in vars(above) or hasattr(type(above), FLAG)
            if has_flag and above not in stacks and not transformers_checkpoints(above):
                stacks.append(above)
    return stacks


def stand_by(module: nn.Module) -> None:
    """transformers' own flag (True) on `module` becomes ON: its checkpointing stays, except
    for calls passing a cache that holds something, which gcshim's wrapper takes."""
    module.__dict__[FLAG] = ON


def stand_down(module: nn.Module) -> None:
    if module.__dict__.get(FLAG) is ON:
        module.__dict__[FLAG] = True


def is_marked(module: nn.Module) -> bool:
    """Whether gcshim has flagged this module (its checkpoint function is a PassThrough)."""
    return isinstance(module.__dict__.get(FUNC), PassThrough)


def switch_off(module: nn.Module) -> Any:
    """Turn transformers' own flag off on `module` (where its branch is broken); returns what
    `switch_back` needs. A copy of the module gets the flag as it was."""
    saved = take(module, FLAG)
    plain_copy.remember(module, FLAG, saved, False)
    module.__dict__[FLAG] = False
    return saved


def switch_back(module: nn.Module, saved: Any) -> None:
    if module.__dict__.get(FLAG) is False:  # else changed since: transformers' choice stays
        put_back(module, FLAG, saved)
    plain_copy.forget(module, FLAG)


def plain_state(state: Dict[str, Any]) -> None:
    """A module's pickled or copied state with gcshim's marks undone."""
    passthrough = state.get(FUNC)
    if isinstance(passthrough, PassThrough) and passthrough.saved is not None:
        for name, value in passthrough.saved:
            plain_copy.put_in_state(state, name, value)

"""Instance-level patching of `forward` with wrapt, and its exact undoing.

Only the instance's own ``__dict__`` is touched: the class, and every other instance of it,
never see gcshim (transformers 5.24 decides whether to checkpoint by comparing
``type(self).forward`` with its own wrapper, so a class-level patch would silently switch its
checkpointing off for every other model). Everything needed to undo a patch lives on the
wrapper itself, so a deep copy of an applied model carries its own patches and can be removed.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any, Iterator, Optional, Tuple

import torch
import wrapt
from packaging.version import Version
from torch import nn

from . import hf_flags
from ._attrs import ABSENT, deepcopy_taken, put_back, take
from .adapters import Adapter, Signature
from .checkpoint import CheckpointOptions
from .offload import Offloader
from .runtime import CheckpointedCall

# wrapt gives the proxy the wrapped bound method's __class__. torch.compile before 2.5 then takes
# the wrapper for that method and traces the original forward: no checkpointing, silently. With
# the wrapper's own class it calls the wrapper, which checkpoints between graph pieces (a graph
# break per layer). From 2.5 dynamo traces the wrapper whole, and the override would break it.
_DYNAMO_TAKES_PROXY_FOR_METHOD = Version(torch.__version__).release < (2, 5)


class CheckpointedForward(wrapt.FunctionWrapper):
    """The `forward` gcshim puts on a layer instance (a transparent wrapt proxy)."""

    def __init__(
        self,
        wrapped: Any,
        call: CheckpointedCall,
        previous: Any = ABSENT,
        owner: Optional[nn.Module] = None,
        flags: Optional[hf_flags.Saved] = None,
    ):
        super().__init__(wrapped, call)
        # transformers' flags on the instance before gcshim marked it (None: not marked).
        self._self_gcshim_flags = flags
        # What the instance's __dict__ held under "forward" before (usually nothing).
        self._self_gcshim_previous = previous
        # The model passed to apply() (weakly held).
        self._self_gcshim_owner = weakref.ref(owner) if owner is not None else None
        # The bound forward and its layer as plain attributes: torch.compile reads these where
        # it cannot read wrapt's C-level ones.
        layer = getattr(wrapped, "__self__", None)
        self._self_gcshim_bound = (wrapped, layer) if isinstance(layer, nn.Module) else None

    if _DYNAMO_TAKES_PROXY_FOR_METHOD:

        @property
        def __class__(self) -> type:
            return type(self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The call wrapt's C proxy makes, spelled in Python so that torch.compile can trace
        # through it (a C-level __call__ is a graph break that drops the whole model to eager).
        bound = self._self_gcshim_bound
        if bound is None:  # not a bound method: let wrapt bind it as it would
            return super().__call__(*args, **kwargs)
        return self._self_wrapper(bound[0], bound[1], args, kwargs)

    @property
    def owner(self) -> Optional[nn.Module]:
        return self._self_gcshim_owner() if self._self_gcshim_owner is not None else None

    @property
    def gcshim_call(self) -> CheckpointedCall:
        return self._self_wrapper

    def __deepcopy__(self, memo: dict) -> CheckpointedForward:
        # The copied module's patch wraps the copied module's own forward.
        previous = deepcopy_taken(self._self_gcshim_previous, memo)
        # The owner maps to its copy when the same deepcopy copied it (the usual whole-model copy).
        owner = self.owner
        owner_copy = memo.get(id(owner)) if owner is not None else None
        wrapped = copy.deepcopy(self.__wrapped__, memo)
        flags = self._self_gcshim_flags
        if flags is not None:
            flags = [(name, deepcopy_taken(value, memo)) for name, value in flags]
        return type(self)(wrapped, self._self_wrapper, previous, owner_copy, flags)

    def __copy__(self) -> CheckpointedForward:
        return type(self)(
            self.__wrapped__, self._self_wrapper, self._self_gcshim_previous, self.owner,
            self._self_gcshim_flags,
        )

    def __reduce_ex__(self, protocol: int) -> Any:
        # Pickle (torch.save) what the wrapper stands for, so the file loads where gcshim was
        # never imported: the original forward, which runs the layer un-checkpointed.
        return self.__wrapped__.__reduce_ex__(protocol)


def patched_forward(module: nn.Module) -> Optional[CheckpointedForward]:
    """The gcshim wrapper on `module`, or None."""
    candidate = module.__dict__.get("forward")
    return candidate if isinstance(candidate, CheckpointedForward) else None


def patch(
    module: nn.Module,
    adapter: Adapter,
    options: CheckpointOptions,
    owner: nn.Module,
    offloader: Optional[Offloader] = None,
) -> CheckpointedForward:
    """Wrap `module.forward` in checkpoint logic (this instance only); flag it for transformers."""
    if patched_forward(module) is not None:
        raise RuntimeError("already patched by gcshim")
    previous = take(module, "forward")
    original = module.forward
    if not callable(original):
        raise TypeError(f"its forward is not callable ({type(original).__name__})")
    call = CheckpointedCall(adapter, options, Signature.of(original), offloader)
    # transformers' own layer branch would null a cache the row says must stay: no flag there
    marked = adapter.cache_policy == "neutralise" and hf_flags.should_mark(module, owner)
    flags = hf_flags.mark(module, options) if marked else None
    wrapper = CheckpointedForward(original, call, previous, owner, flags)
    module.__dict__["forward"] = wrapper
    return wrapper


def unpatch(module: nn.Module, wrapper: Optional[CheckpointedForward] = None) -> bool:
    """Undo gcshim's patch on `module` (only `wrapper` if given); True if something was undone."""
    current = patched_forward(module)
    if current is None or (wrapper is not None and current is not wrapper):
        return False
    if current._self_gcshim_flags is not None:
        hf_flags.unmark(module, current._self_gcshim_flags)
    put_back(module, "forward", current._self_gcshim_previous)
    return True


def iter_patched(model: nn.Module) -> Iterator[Tuple[str, nn.Module, CheckpointedForward]]:
    """(path, module, wrapper) for every patched module under `model`, root included."""
    for path, module in model.named_modules():
        wrapper = patched_forward(module)
        if wrapper is not None:
            yield path, module, wrapper

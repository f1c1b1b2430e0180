"""Instance-level patching of `forward` with wrapt, and its exact undoing.

Only the instance's own ``__dict__`` is touched: the class, and every other instance of it,
never see gcshim (transformers 5.24 decides whether to checkpoint by comparing
``type(self).forward`` with its own wrapper, so a class-level patch would silently switch its
checkpointing off for every other model). Everything needed to undo a patch lives on the
wrapper itself, so a deep copy of an applied model carries its own patches and can be removed.
"""

from __future__ import annotations

import copy
import functools
import inspect
import weakref
from typing import Any, Iterator, Optional, Tuple

import torch
import wrapt
from packaging.version import Version
from torch import nn

from . import hf_flags, plain_copy
from ._attrs import ABSENT, deepcopy_taken, put_back, take
from .adapters import Adapter, Signature
from .checkpoint import CheckpointOptions
from .errors import PatchedOverError
from .offload import Offloader
from .runtime import CheckpointedCall

# wrapt gives the proxy the wrapped bound method's __class__. torch.compile before 2.5 then takes
# the wrapper for that method and traces the original forward: no checkpointing, silently. With
# the wrapper's own class it calls the wrapper, which checkpoints between graph pieces (a graph
# break per layer). From 2.5 dynamo traces the wrapper whole, and the override would break it.
_DYNAMO_TAKES_PROXY_FOR_METHOD = Version(torch.__version__).release < (2, 5)


def _class_forward(cls: type) -> Optional[Tuple[type, Any]]:
    """(the class in cls's MRO that defines forward, that forward as stored there)."""
    for owner in cls.__mro__:
        if "forward" in owner.__dict__:
            return owner, owner.__dict__["forward"]
    return None


class CheckpointedForward(wrapt.FunctionWrapper):
    """The `forward` gcshim puts on a layer instance (a transparent wrapt proxy)."""

    def __init__(
        self,
        wrapped: Any,
        call: CheckpointedCall,
        previous: Any = ABSENT,
        owner: Optional[nn.Module] = None,
        flags: Optional[hf_flags.Saved] = None,
        layer: Optional[nn.Module] = None,
    ):
        super().__init__(wrapped, call)
        # transformers' flags on the instance before gcshim marked it (None: not marked).
        self._self_gcshim_flags = flags
        # What the instance's __dict__ held under "forward" before (usually nothing).
        self._self_gcshim_previous = previous
        # The model passed to apply() (weakly held).
        self._self_gcshim_owner = weakref.ref(owner) if owner is not None else None
        # The forward and its layer as plain attributes: torch.compile reads these where it
        # cannot read wrapt's C-level ones. The layer is given where the forward is not a bound
        # method of it (a partial another tool put on the instance, as accelerate's hooks do).
        if layer is None:
            layer = getattr(wrapped, "__self__", None)
        self._self_gcshim_bound = (wrapped, layer) if isinstance(layer, nn.Module) else None
        # Where the class's forward lives and what it was when gcshim wrapped it (None: the
        # instance had its own). A tool replacing it later (liger-kernel style) is followed.
        self._self_gcshim_class_forward = (
            _class_forward(type(layer)) if previous is ABSENT and layer is not None else None)

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
        forward, layer = bound
        at_apply = self._self_gcshim_class_forward
        if at_apply is not None and at_apply[0].__dict__.get("forward") is not at_apply[1]:
            # replaced on the class since apply: call what the class has now
            forward = inspect.getattr_static(type(layer), "forward").__get__(layer, type(layer))
        return self._self_wrapper(forward, layer, args, kwargs)

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
        layer = self._self_gcshim_bound[1] if self._self_gcshim_bound is not None else None
        layer_copy = memo.get(id(layer)) if layer is not None else None
        at_apply = self._self_gcshim_class_forward
        if at_apply is not None and layer_copy is not None:
            # the class's forward bound to the copy: a class-level wrapper (wrapt's bound
            # proxy) cannot be deep-copied, and need not be
            wrapped = at_apply[1].__get__(layer_copy, type(layer_copy))
        else:
            wrapped = copy.deepcopy(self.__wrapped__, memo)
        flags = self._self_gcshim_flags
        if flags is not None:
            flags = [(name, deepcopy_taken(value, memo)) for name, value in flags]
        return type(self)(wrapped, self._self_wrapper, previous, owner_copy, flags, layer_copy)

    def __copy__(self) -> CheckpointedForward:
        layer = self._self_gcshim_bound[1] if self._self_gcshim_bound is not None else None
        return type(self)(
            self.__wrapped__, self._self_wrapper, self._self_gcshim_previous, self.owner,
            self._self_gcshim_flags, layer,
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
    path: str = "",
) -> CheckpointedForward:
    """Wrap `module.forward` in checkpoint logic (this instance only); flag it for transformers."""
    if patched_forward(module) is not None:
        raise RuntimeError("already patched by gcshim")
    previous = take(module, "forward")
    original = module.forward
    if not callable(original):
        raise TypeError(f"its forward is not callable ({type(original).__name__})")
    call = CheckpointedCall(adapter, options, Signature.of(original), offloader, path)
    # transformers' own layer branch would null a cache the row says must stay: no flag there
    marked = adapter.cache_policy == "neutralise" and hf_flags.should_mark(module, owner)
    flags = None
    try:
        plain_copy.hook_of(module)
        flags = hf_flags.mark(module, options) if marked else None
        wrapper = CheckpointedForward(original, call, previous, owner, flags, module)
        module.__dict__["forward"] = wrapper
    except BaseException:  # interrupted half-way: this layer as it was
        if flags is not None:
            hf_flags.unmark(module, flags)
        put_back(module, "forward", previous)
        plain_copy.drop_if_plain(module)
        raise
    return wrapper


def _inner_forwards(outer: Any, depth: int = 8) -> Iterator[Any]:
    """What `outer` wraps, through __wrapped__ (functools.wraps, wrapt) or a partial's func
    (accelerate's hooks): the ways tools wrap a forward."""
    for _ in range(depth):
        nxt = getattr(outer, "__wrapped__", None)
        if nxt is None and isinstance(outer, functools.partial):
            nxt = outer.func
        if nxt is None:
            return
        yield nxt
        outer = nxt


def check_removable(module: nn.Module, path: str) -> None:
    """Raise PatchedOverError if another tool's forward on `module` wraps a gcshim forward."""
    current = module.__dict__.get("forward")
    if current is None or isinstance(current, CheckpointedForward):
        return
    if any(isinstance(inner, CheckpointedForward) for inner in _inner_forwards(current)):
        raise PatchedOverError(
            f"gcshim: the forward of {path or 'the model'} ({type(module).__name__}) was "
            f"wrapped by another tool after gcshim ({type(current).__name__}); removing gcshim "
            "now would leave its checkpointing inside that wrapper. Remove the other tool's "
            "wrapper first, then gcshim. Nothing was removed.")


def unpatch(module: nn.Module, wrapper: Optional[CheckpointedForward] = None) -> bool:
    """Undo gcshim's patch on `module` (only `wrapper` if given); True if its forward was put
    back. A forward another tool has put in place since is left alone, and transformers' flags
    gcshim set are restored either way."""
    current = patched_forward(module)
    target = wrapper if wrapper is not None else current
    if target is None:
        return False
    if target._self_gcshim_flags is not None:
        hf_flags.unmark(module, target._self_gcshim_flags)
        target._self_gcshim_flags = None
    if current is not target:
        return False
    put_back(module, "forward", current._self_gcshim_previous)
    plain_copy.drop_if_plain(module)
    return True


def iter_patched(model: nn.Module) -> Iterator[Tuple[str, nn.Module, CheckpointedForward]]:
    """(path, module, wrapper) for every patched module under `model`, root included."""
    for path, module in model.named_modules():
        wrapper = patched_forward(module)
        if wrapper is not None:
            yield path, module, wrapper

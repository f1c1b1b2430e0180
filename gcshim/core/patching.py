"""Instance-level patching of `forward` with wrapt, and its exact undoing.

Only the instance's own ``__dict__`` is touched: the class, and every other instance of it,
never see gcshim (transformers 5.24 decides whether to checkpoint by comparing
``type(self).forward`` with its own wrapper, so a class-level patch would silently switch its
checkpointing off for every other model). The wrapper holds its layer weakly: the layer holds
the wrapper, and a model dropped without `remove()` is freed by reference counting alone.
"""

from __future__ import annotations

import copy
import functools
import inspect
import weakref
from typing import Any, Callable, Iterator, Optional, Tuple

import torch
import wrapt
from packaging.version import Version
from torch import nn

from ..adapters import Adapter
from ..errors import PatchedOverError
from . import hooks, plain_copy
from .attrs import ABSENT, deepcopy_taken, put_back, take
from .call import CheckpointedCall
from .offload import Offloader
from .signature import Signature
from .torch_checkpoint import CheckpointOptions
from .undo import UndoLog

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


class _WeakBound:
    """A layer's forward (the class's, bound at each call) holding the layer weakly; what the
    wrapt proxy wraps, so that it reads as the bound method it stands for."""

    def __init__(self, function: Any, layer: nn.Module) -> None:
        self.__func__ = function
        self._layer = weakref.ref(layer)

    @property
    def __self__(self) -> Optional[nn.Module]:
        return self._layer()

    def _bound(self) -> Callable[..., Any]:
        layer = self._layer()
        return self.__func__.__get__(layer, type(layer))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._bound()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # __name__, __doc__, __signature__, ...
        return getattr(self._bound(), name)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self._bound())

    def __reduce__(self) -> Any:
        return self._bound().__reduce__()


class CheckpointedForward(wrapt.FunctionWrapper):
    """The `forward` gcshim puts on a layer instance (a transparent wrapt proxy)."""

    def __init__(
        self,
        layer: nn.Module,
        call: CheckpointedCall,
        previous: Any = ABSENT,
        owner: Optional[nn.Module] = None,
    ):
        # Where the class's forward lives and what it was when gcshim wrapped it (None: the
        # instance had its own forward, kept in `previous`). A tool replacing the class's
        # forward later (liger-kernel style) is followed.
        class_forward = _class_forward(type(layer)) if previous is ABSENT else None
        if class_forward is not None:
            wrapped: Any = _WeakBound(class_forward[1], layer)
        else:  # an instance forward of another tool's (accelerate's partial, say)
            wrapped = previous if previous is not ABSENT else layer.forward
        super().__init__(wrapped, call)
        # What the instance's __dict__ held under "forward" before (usually nothing).
        self._self_gcshim_previous = previous
        # The model passed to apply() and the layer, both weakly held; plain attributes that
        # torch.compile can read where it cannot read wrapt's C-level ones.
        self._self_gcshim_owner = weakref.ref(owner) if owner is not None else None
        self._self_gcshim_layer = weakref.ref(layer)
        self._self_gcshim_class_forward = class_forward
        # what each call reads, in one attribute read (a proxy's attributes cost 3x a plain one)
        self._self_gcshim_call_parts = (self._self_gcshim_layer, class_forward, call)

    if _DYNAMO_TAKES_PROXY_FOR_METHOD:

        @property
        def __class__(self) -> type:
            return type(self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The call wrapt's C proxy makes, spelled in Python so that torch.compile can trace
        # through it (a C-level __call__ is a graph break that drops the whole model to eager).
        layer_ref, at_apply, call = self._self_gcshim_call_parts
        layer = layer_ref()
        if at_apply is None:
            forward = self.__wrapped__
        else:
            function = at_apply[0].__dict__.get("forward")
            if function is not at_apply[1]:  # replaced on the class since apply: follow it
                function = inspect.getattr_static(type(layer), "forward")
            forward = function.__get__(layer, type(layer))
        return call(forward, layer, args, kwargs)

    @property
    def owner(self) -> Optional[nn.Module]:
        return self._self_gcshim_owner() if self._self_gcshim_owner is not None else None

    @property
    def layer(self) -> Optional[nn.Module]:
        return self._self_gcshim_layer()

    @property
    def gcshim_call(self) -> CheckpointedCall:
        return self._self_wrapper

    def __deepcopy__(self, memo: dict) -> CheckpointedForward:
        # (a deep copy that keeps gcshim: see gcshim.core.plain_copy) The copied layer's patch
        # wraps the copied layer's own forward; the owner maps to its copy when the same
        # deepcopy copied it (the usual whole-model copy). The call's findings are the layer's.
        owner = self.owner
        layer = self.layer
        return type(self)(memo.get(id(layer), layer), copy.copy(self._self_wrapper),
                          deepcopy_taken(self._self_gcshim_previous, memo),
                          memo.get(id(owner)) if owner is not None else None)

    def __copy__(self) -> CheckpointedForward:
        return type(self)(self.layer, self._self_wrapper, self._self_gcshim_previous, self.owner)

    def __reduce_ex__(self, protocol: int) -> Any:
        # Pickle what the wrapper stands for (the original forward, un-checkpointed), so a
        # file loads where gcshim was never imported.
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
    undo: UndoLog,
    offloader: Optional[Offloader] = None,
    path: str = "",
) -> CheckpointedForward:
    """Wrap `module.forward` in checkpoint logic (this instance only), tell the frameworks,
    and record each change in `undo` as it is made."""
    if patched_forward(module) is not None:
        raise RuntimeError("already patched by gcshim")
    previous = take(module, "forward")
    original = module.forward
    if not callable(original):
        raise TypeError(f"its forward is not callable ({type(original).__name__})")
    signature = Signature.of(original)
    plain_copy.hook_of(module)  # first: a copy made from here on is plain
    undo.record(plain_copy.forget, module)
    for framework in hooks.frameworks():
        framework.on_patched(module, owner, options, adapter, undo)
    # made after the frameworks' marks: it decides from the layer as it will be called
    call = CheckpointedCall(adapter, options, signature, offloader, path, module)
    wrapper = CheckpointedForward(module, call, previous, owner)
    module.__dict__["forward"] = wrapper
    undo.record(lambda layer: _put_forward_back(layer, wrapper), module,
                check=lambda layer: check_removable(layer, path))
    return wrapper


def _put_forward_back(module: nn.Module, wrapper: CheckpointedForward) -> bool:
    """The module's forward as before `wrapper` went on, unless another tool has replaced it
    since (then theirs stays)."""
    if patched_forward(module) is not wrapper:
        return False
    put_back(module, "forward", wrapper._self_gcshim_previous)
    return True


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


def unpatch(module: nn.Module) -> bool:
    """Undo a gcshim patch found on `module` (one no Handle recorded: a kept deep copy's);
    True if its forward was put back. The frameworks take their marks off either way."""
    wrapper = patched_forward(module)
    if wrapper is None:
        return False
    for framework in hooks.frameworks():
        framework.release(module)
    put_back(module, "forward", wrapper._self_gcshim_previous)
    plain_copy.forget(module)
    return True


def iter_patched(model: nn.Module) -> Iterator[Tuple[str, nn.Module, CheckpointedForward]]:
    """(path, module, wrapper) for every patched module under `model`, root included."""
    for path, module in model.named_modules():
        wrapper = patched_forward(module)
        if wrapper is not None:
            yield path, module, wrapper

"""What leaves a checkpointed layer other than through its outputs, found at its first call.

Two things make a checkpointed step's gradients differ from the plain step's without a word:

- **escape**: the layer puts a tensor that needs a gradient where a later layer reads it (into a
  dict, list or cache object it was passed, or onto a module attribute). Reentrant checkpointing
  runs the forward under ``no_grad``, so that tensor carries no graph and its gradient is lost.
  Non-reentrant checkpointing keeps its graph: the cure is to checkpoint the layer non-reentrant.
- **in-place state**: the layer writes in place into a tensor held inside an argument object
  that checkpointing does not see as an input (a state or cache object). The recompute in
  backward then starts from the written values, not the ones the forward saw, in either mode.
  The cure is to put the values the forward saw back for the recompute (`Replay`).

- **state**: the layer changes a container, a state object or its own attributes (a dict
  entry, a step counter). The recompute would start from what the forward left: `Replay`
  puts back what the forward saw, then what it left.
- **grad mode**: the forward computes other values without grad (`run_without_grad`,
  `same_values`); reentrant's forward runs without grad, so the layer goes non-reentrant.

A `Probe` is taken before a layer's first checkpointed call and read after it; the walk is
bounded (depth and count). Later calls take one only for layers the first found changing state.
"""

from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from .._log import warn_once
from ..errors import SideChannelError
from .side_effects import _version, as_recompute, buffers_kept, nbytes, small

_MAX_DEPTH = 5
_MAX_NODES = 20_000
# Values that hold no tensor a layer could write to.
_INERT = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device,
          type, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
          types.ModuleType, torch.Size)
_MODULE_INTERNALS = frozenset({"_parameters", "_buffers", "_modules",
                               "_non_persistent_buffers_set"})


def _is_module_internal(key: str) -> bool:
    # a module's own bookkeeping (parameters, buffers, submodules, hooks): not side channels
    return key in _MODULE_INTERNALS or key.endswith(("_hooks", "_hooks_with_kwargs"))


def _items(node: Any) -> Optional[List[Tuple[Any, Any]]]:
    """What a mutable container holds, as (key, value) (None: not a container gcshim watches).
    A module's attributes count, less torch's bookkeeping."""
    if isinstance(node, dict):
        return list(node.items())
    if isinstance(node, list):
        return list(enumerate(node))
    if isinstance(node, nn.Module):
        return [(key, value) for key, value in vars(node).items()
                if not _is_module_internal(key)]
    state = getattr(node, "__dict__", None)
    if isinstance(state, dict) and not isinstance(node, torch.Tensor):
        return list(state.items())
    return None


@dataclass
class _Watched:
    where: str  # how a user finds it: "argument 'cache'", "attribute mlp."
    container: Any
    items: List[Tuple[Any, Any]]  # what it held before the call (which keeps their ids unique)
    in_cache: bool = False  # reached from a kept cache argument (see Route)

    def changed(self) -> List[Tuple[Any, Any]]:
        """The (key, value) pairs the call added or replaced."""
        before = {key: id(value) for key, value in self.items}
        return [(key, value) for key, value in _items(self.container) or ()
                if before.get(key) != id(value)]

    def shrank(self) -> bool:
        return len(_items(self.container) or ()) < len(self.items)


@dataclass
class _Held:
    """A tensor held inside an object (out of checkpoint's sight), and where it sits."""

    where: str
    tensor: torch.Tensor
    version: int
    container: Any  # None inside a tuple: it cannot be swapped
    key: Any
    in_cache: bool
    requires_grad: bool  # at the call (an in-place write of a value with a graph changes it)


class _Walk:
    """Containers and tensors reachable from some roots, each visited once."""

    def __init__(self, skip: Set[int]) -> None:
        self.seen: Set[int] = set(skip)
        self.containers: List[_Watched] = []
        self.tensors: List[_Held] = []  # tensors held inside objects
        self.cut: Optional[str] = None  # where the walk stopped short inside a kept cache

    def watch(self, where: str, node: Any, items: List[Tuple[Any, Any]],
              in_cache: bool = False) -> None:
        self.containers.append(_Watched(where, node, items, in_cache))

    def visit(self, where: str, node: Any, depth: int = 0, inside_object: bool = False,
              in_cache: bool = False, parent: Any = None, key: Any = None) -> None:
        if isinstance(node, _INERT) or id(node) in self.seen:
            return
        if len(self.seen) > _MAX_NODES or (depth > _MAX_DEPTH and not isinstance(
                node, torch.Tensor) and (in_cache or not isinstance(node, nn.Module))):
            if in_cache and self.cut is None:
                self.cut = where  # a kept cache must be seen whole to be put back exactly
            return
        self.seen.add(id(node))
        if isinstance(node, torch.Tensor):
            if inside_object:
                self.tensors.append(_Held(where, node, _version(node), parent, key, in_cache,
                                          node.requires_grad))
            return
        if isinstance(node, nn.Module) and not in_cache:  # a cache is one on 4.42-4.4x
            return
        items = _items(node)
        container = node
        if items is not None:
            self.watch(where, node, items, in_cache)
        elif isinstance(node, tuple):
            items, container = list(enumerate(node)), None
        else:
            return
        # tensors in plain tuples, lists and dicts are checkpoint inputs (torch watches those);
        # inside any other object they are out of checkpoint's sight
        opaque = inside_object or not isinstance(node, (tuple, list, dict))
        for item_key, child in items:
            step = f".{item_key}" if opaque and isinstance(item_key, str) else f"[{item_key!r}]"
            self.visit(where + step, child, depth + 1, opaque, in_cache, container, item_key)


def tensors_in(node: Any, depth: int = 0, modules: bool = False) -> Iterator[torch.Tensor]:
    """Tensors in a value written somewhere (bounded, the way `_Walk` goes); `modules`: into
    modules too (a cache is one on transformers 4.42-4.4x)."""
    if isinstance(node, torch.Tensor):
        yield node
        return
    if isinstance(node, _INERT) or (isinstance(node, nn.Module) and not modules) \
            or depth > _MAX_DEPTH:
        return
    items = _items(node) if not isinstance(node, tuple) else list(enumerate(node))
    for _key, child in items or ():
        yield from tensors_in(child, depth + 1, modules)


def _argument_roots(args: Tuple[Any, ...], kwargs: Dict[str, Any],
                    names: Dict[int, str]) -> Iterator[Tuple[str, Optional[str], Any]]:
    for index, value in enumerate(args):
        name = names.get(index)
        yield (f"argument {name!r}" if name else f"positional argument {index}"), name, value
    for name, value in kwargs.items():
        yield f"argument {name!r}", name, value


@dataclass(frozen=True)
class Finding:
    # "escape", "written in place", "hidden input", "grad mode" (reentrant gives other
    # gradients); "in-place state", "state" (the recompute would start from what the forward
    # left: replayed)
    kind: str
    where: str
    # inside a kept cache: put back for the recompute, and carried through reentrant
    # checkpointing by a Route
    in_cache: bool = False

    @property
    def loses_gradient(self) -> bool:
        """Whether reentrant checkpointing would give other gradients (non-reentrant does not)."""
        return self.kind in ("escape", "written in place", "hidden input", "grad mode") \
            and not self.in_cache

    def __str__(self) -> str:
        if self.kind == "escape":
            return (f"puts a tensor that needs a gradient into {self.where}, where later "
                    "layers read it (reentrant checkpointing would leave it without a graph)")
        if self.kind == "written in place":
            return (f"writes a value that needs a gradient in place into {self.where}, where "
                    "later layers read it (reentrant checkpointing would write it without a "
                    "graph)")
        if self.kind == "hidden input":
            return (f"reads a tensor that needs a gradient from {self.where}, which "
                    "checkpointing does not take apart into inputs (reentrant checkpointing "
                    "would lose its gradient or backpropagate through it twice)")
        if self.kind == "grad mode":
            return ("computes other values without grad than with it (a kernel chosen by grad "
                    "mode), and reentrant checkpointing runs the forward without grad: later "
                    "layers would see values the un-checkpointed step never computes")
        if self.kind == "in-place state":
            return f"writes in place into a tensor held in {self.where}"
        return f"changes {self.where}"


def _put_items(container: Any, items: List[Tuple[Any, Any]]) -> None:
    """Make `container` hold exactly `items` (a module keeps its own bookkeeping)."""
    if isinstance(container, dict):
        container.clear()
        container.update(items)
    elif isinstance(container, list):
        container[:] = [value for _key, value in items]
    else:
        state = vars(container)
        for key in [key for key, _value in _items(container) or ()]:
            del state[key]
        state.update(items)


def _same_items(now: List[Tuple[Any, Any]], before: List[Tuple[Any, Any]]) -> bool:
    return len(now) == len(before) and all(
        key == was_key and value is was for (key, value), (was_key, was) in zip(now, before))


def _snapshot(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of `tensor`'s value now; differentiable where it requires grad, so that what is
    computed from the copy has the gradient path the tensor had at this point."""
    with torch.enable_grad():
        return tensor.clone() if tensor.requires_grad else tensor.detach().clone()


class Replay:
    """What a layer's call changed, put back as the forward saw it while the layer recomputes:
    the tensors it wrote in place (their object swapped for a copy of the value the forward
    read, so that the recompute also has the gradient path it had), the contents of containers
    it changed (a dict or list it was passed, a state object, its own attributes), and of every
    container of a kept cache that anything changed since (its stack counting positions after
    the call)."""

    __slots__ = ("tensors", "containers", "_after", "_moved")

    def __init__(self, tensors: List[Tuple[_Held, torch.Tensor]],
                 containers: List[Tuple[Any, List[Tuple[Any, Any]]]]) -> None:
        self.tensors = tensors  # (the tensor, a snapshot of its value before the forward)
        self.containers = containers  # (the container, its items before the forward)
        self._after: List[torch.Tensor] = []  # values of tensors that cannot be swapped
        self._moved: List[Tuple[Any, List[Tuple[Any, Any]]]] = []  # (container, its items now)

    def restore(self) -> None:
        """Put the state before the call back for good (after a trial run without grad)."""
        with torch.no_grad():
            for held, before in self.tensors:
                held.tensor.copy_(before)
        for container, before in self.containers:
            _put_items(container, before)

    def __enter__(self) -> None:
        self._moved = []
        for container, before in self.containers:
            now = _items(container) or []
            if not _same_items(now, before):
                self._moved.append((container, now))
                _put_items(container, before)
        with torch.no_grad():  # the forward's view; the current one kept for after
            self._after = [held.tensor.clone() for held, _ in self.tensors
                           if held.container is None]
            for held, before in self.tensors:
                if held.container is None:
                    held.tensor.copy_(before)
        for held, before in self.tensors:
            if held.container is not None:
                _put(held.container, held.key, _snapshot(before))

    def __exit__(self, *exc: Any) -> None:
        for held, _before in self.tensors:
            if held.container is not None:
                _put(held.container, held.key, held.tensor)
        with torch.no_grad():
            unswapped = [held for held, _ in self.tensors if held.container is None]
            for held, after in zip(unswapped, self._after):
                held.tensor.copy_(after)
        for container, after in self._moved:
            _put_items(container, after)
        self._after, self._moved = [], []


class Probe:
    """What a layer's call can reach, taken before the call; read after it.

    `findings()` says what the call did that checkpointing cannot follow by itself;
    `replay()` what to put back for the recompute.
    """

    def __init__(self, layer: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any],
                 inputs: List[torch.Tensor], positions: Dict[str, int],
                 kept_caches: Tuple[str, ...] = ()) -> None:
        walk = _Walk({id(t) for t in inputs})
        names = {index: name for name, index in positions.items()}
        for where, name, root in _argument_roots(args, kwargs, names):
            walk.visit(where, root, in_cache=name in kept_caches)
        self._layer = type(layer).__qualname__
        attributes = []  # tensors the layer keeps as plain attributes (a cache window)
        for path, module in layer.named_modules():
            items = _items(module) or []
            where = f"attribute {path + '.' if path else ''}"
            walk.watch(where, module, items)
            for key, value in items:  # containers the layer keeps (a list it appends to)
                if isinstance(value, torch.Tensor):
                    attributes.append(_Held(where + key, value, _version(value), module, key,
                                            False, value.requires_grad))
                else:
                    walk.visit(where + key, value, 1)
        self._containers = walk.containers
        self.cut = walk.cut
        # tensors in argument objects (inputs out of checkpoint's sight), then the layer's own
        self._held = [held for held in walk.tensors if not held.where.startswith("attribute ")]
        self._own = len(self._held)
        self._held += attributes
        self._copies = [_snapshot(held.tensor) if index < self._own or small(held.tensor)
                        else None for index, held in enumerate(self._held)]

    def _written_held(self) -> List[Tuple[_Held, torch.Tensor]]:
        """The held tensors the call wrote in place, each with its value before."""
        written = [(held, copy) for held, copy in zip(self._held, self._copies)
                   if _version(held.tensor) != held.version]
        too_large = next((held for held, copy in written if copy is None), None)
        if too_large is not None:
            raise SideChannelError(
                f"gcshim: layer {self._layer} writes in place into "
                f"{too_large.where[len('attribute '):]!r}"
                f", a tensor of {nbytes(too_large.tensor)} bytes it keeps as a plain attribute: "
                "too large for gcshim to copy at every call, and its recompute would start from "
                "what the forward wrote. Leave this layer out of `layers`.")
        return written

    def findings(self) -> List[Finding]:
        found: List[Finding] = []
        for watched in self._containers:
            changed = watched.changed()
            escaped = [(key, value) for key, value in changed
                       if any(t.requires_grad for t in tensors_in(value))]
            if escaped:
                # a tensor written into a kept cache comes out of a Route as an output
                routed = watched.in_cache and all(
                    isinstance(value, torch.Tensor) for _key, value in escaped)
                found.append(Finding("escape", _describe(watched, escaped[0][0]), routed))
            elif changed or watched.shrank():
                key = changed[0][0] if changed else None
                found.append(Finding("state", _describe(watched, key), watched.in_cache))
        for held, _copy in self._written_held():
            if held.tensor.requires_grad and not held.where.startswith("attribute "):
                # a value with a graph, written in place into what later layers read
                found.append(Finding("written in place", held.where))
            else:
                found.append(Finding("in-place state", held.where, held.in_cache))
        found += [Finding("hidden input", held.where,
                          held.in_cache and held.container is not None)
                  for held in self._held[:self._own] if held.requires_grad]
        return found

    def undo(self) -> None:
        """Put back what a call changed, for good (after a trial run), and watch from here."""
        changed = self.replay()
        if changed is not None:
            changed.restore()  # what the call left is dropped
        for held in self._held:
            held.version = _version(held.tensor)

    def route(self) -> Route:
        """How this call's kept caches travel through reentrant checkpointing."""
        return Route([held for held in self._held if held.in_cache and held.requires_grad
                      and held.container is not None],
                     [watched for watched in self._containers if watched.in_cache])

    def replay(self) -> Optional[Replay]:
        """What the call changed, to put back for its recompute (None: it changed nothing)."""
        tensors = self._written_held()
        containers = [(w.container, w.items) for w in self._containers
                      if w.in_cache or w.changed() or w.shrank()]
        return Replay(tensors, containers) if tensors or containers else None


def _put(container: Any, key: Any, value: Any) -> None:
    if isinstance(container, (dict, list)):
        container[key] = value
    else:
        vars(container)[key] = value


class Route:
    """A kept cache through reentrant checkpointing, whose forward runs without grad.

    The tensors the cache holds that need a gradient (a learned prefix) go in as checkpoint
    inputs: the recompute reads the checkpoint's copies of them, so their gradients come back
    through the checkpoint. The tensors the call writes into the cache (keys and values with
    the new positions) come out as checkpoint outputs and are written back in their place, so
    the cache holds them with their graph, as after an un-checkpointed call.
    """

    __slots__ = ("inputs", "_watched", "_written", "_reading")

    def __init__(self, inputs: List[_Held], watched: List[_Watched]) -> None:
        self.inputs = inputs
        self._watched = watched
        self._written: List[Tuple[_Watched, Any]] = []  # where the forward wrote tensors
        self._reading: Set[int] = set()  # ids of the copies `reading` put in: not writes

    @property
    def tensors(self) -> List[torch.Tensor]:
        return [held.tensor for held in self.inputs]

    @contextlib.contextmanager
    def reading(self, copies: Sequence[torch.Tensor]) -> Iterator[None]:
        """The recompute reads `copies` (the checkpoint's) where the cache holds its inputs."""
        self._reading = {id(copy) for copy in copies}
        for held, copy in zip(self.inputs, copies):
            _put(held.container, held.key, copy)
        try:
            yield
        finally:
            for held in self.inputs:
                _put(held.container, held.key, held.tensor)
            self._reading = set()

    def written(self) -> List[torch.Tensor]:
        """The tensors the call just wrote into the cache: found after the forward, read from
        the same places after the recompute (so that the two line up)."""
        if not self._written:
            self._written = [(watched, key) for watched in self._watched
                             for key, value in watched.changed()
                             if isinstance(value, torch.Tensor) and id(value) not in self._reading]
        before = [dict((k, id(v)) for k, v in watched.items) for watched, _key in self._written]
        found = [dict(_items(watched.container) or ()).get(key)
                 for watched, key in self._written]
        if any(not isinstance(value, torch.Tensor) or id(value) == was.get(key)
               for value, was, (_w, key) in zip(found, before, self._written)):
            raise RuntimeError("gcshim: the recompute wrote other cache entries than the "
                               "forward did; checkpoint this layer with use_reentrant=False")
        return found

    def write_back(self, tensors: Sequence[torch.Tensor]) -> None:
        """Put the checkpoint's outputs (with their graph) where the forward wrote."""
        for (watched, key), tensor in zip(self._written, tensors):
            _put(watched.container, key, tensor)


def _describe(watched: _Watched, key: Any) -> str:
    if isinstance(watched.container, nn.Module):
        name = f"{watched.where[len('attribute '):]}{key if key is not None else ''}"
        return f"layer attribute '{name}'"
    if watched.where.startswith("attribute "):
        return f"layer attribute '{watched.where[len('attribute '):]}'"
    kind = type(watched.container).__name__
    return f"{watched.where} ({kind})"




def run_without_grad(call: Callable[[], Any], layer: nn.Module, probe: Probe,
                     devices: List[int]) -> Tuple[bool, Any]:
    """Run `call` as reentrant checkpointing's forward would (no grad), leaving no trace: the
    RNG, the layer's buffers and whatever the call changed come back as they were.
    (whether it ran, its output or its error)."""
    copied, large = [], []
    for owner in layer.modules():
        for name, value in owner._buffers.items():
            if value is not None:
                (copied if small(value) else large).append((owner, name, value))
    watched = [(owner, name, value, _version(value)) for owner, name, value in large]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices), buffers_kept(copied):
            return True, as_recompute(call)
    except Exception as error:  # the real call will say it again, where it belongs
        return False, error
    finally:
        probe.undo()
        for owner, name, buffer, version in watched:
            if owner._buffers.get(name) is not buffer:
                owner._buffers[name] = buffer  # reassigned: the original back
            elif _version(buffer) != version:
                warn_once(f"trial-buffer:{id(owner)}:{name}",
                          f"gcshim: checking layer {type(layer).__qualname__} ran its forward "
                          f"once more, and that wrote into its large buffer {name!r} of "
                          f"{type(owner).__qualname__}; use_reentrant=False avoids the check")


def same_values(first: Any, second: Any) -> bool:
    """Whether two outputs hold the same tensors, bit for bit (NaN equal to NaN)."""
    from .tree import flatten

    ours, theirs = flatten(first)[0], flatten(second)[0]
    if len(ours) != len(theirs):
        return False
    for a, b in zip(ours, theirs):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point() or a.is_complex():
            if not bool(((a == b) | (a.isnan() & b.isnan())).all()):
                return False
        elif not torch.equal(a, b):
            return False
    return True

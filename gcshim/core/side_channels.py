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

import types
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import torch
from torch import nn

from .._log import warn_once
from .side_effects import RECOMPUTING, _version, buffers_kept

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

    def changed(self) -> List[Tuple[Any, Any]]:
        """The (key, value) pairs the call added or replaced."""
        before = {key: id(value) for key, value in self.items}
        return [(key, value) for key, value in _items(self.container) or ()
                if before.get(key) != id(value)]

    def shrank(self) -> bool:
        return len(_items(self.container) or ()) < len(self.items)


class _Walk:
    """Containers and tensors reachable from some roots, each visited once."""

    def __init__(self, skip: Set[int]) -> None:
        self.seen: Set[int] = set(skip)
        self.containers: List[_Watched] = []
        self.tensors: List[Tuple[str, torch.Tensor]] = []  # tensors held inside objects

    def watch(self, where: str, node: Any, items: List[Tuple[Any, Any]]) -> None:
        self.containers.append(_Watched(where, node, items))

    def visit(self, where: str, node: Any, depth: int = 0, inside_object: bool = False) -> None:
        if isinstance(node, _INERT) or id(node) in self.seen or len(self.seen) > _MAX_NODES:
            return
        self.seen.add(id(node))
        if isinstance(node, torch.Tensor):
            if inside_object:
                self.tensors.append((where, node))
            return
        if isinstance(node, nn.Module) or depth > _MAX_DEPTH:
            return
        items = _items(node)
        if items is not None:
            self.watch(where, node, items)
        elif isinstance(node, tuple):
            items = list(enumerate(node))
        else:
            return
        # tensors in plain tuples, lists and dicts are checkpoint inputs (torch watches those);
        # inside any other object they are out of checkpoint's sight
        opaque = inside_object or not isinstance(node, (tuple, list, dict))
        for key, child in items:
            step = f".{key}" if opaque and isinstance(key, str) else f"[{key!r}]"
            self.visit(where + step, child, depth + 1, opaque)


def _tensors_in(node: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """Tensors in a value written somewhere (bounded, the way `_Walk` goes)."""
    if isinstance(node, torch.Tensor):
        yield node
        return
    if isinstance(node, (_INERT, nn.Module)) or depth > _MAX_DEPTH:
        return
    items = _items(node) if not isinstance(node, tuple) else list(enumerate(node))
    for _key, child in items or ():
        yield from _tensors_in(child, depth + 1)


def _argument_roots(args: Tuple[Any, ...], kwargs: Dict[str, Any],
                    names: Dict[int, str]) -> Iterator[Tuple[str, Any]]:
    for index, value in enumerate(args):
        name = names.get(index)
        yield (f"argument {name!r}" if name else f"positional argument {index}"), value
    for name, value in kwargs.items():
        yield f"argument {name!r}", value


@dataclass(frozen=True)
class Finding:
    # "escape", "hidden input", "grad mode" (reentrant gives other gradients); "in-place
    # state", "state" (the recompute would start from what the forward left: replayed)
    kind: str
    where: str

    @property
    def loses_gradient(self) -> bool:
        """Whether reentrant checkpointing would give other gradients (non-reentrant does not)."""
        return self.kind in ("escape", "hidden input", "grad mode")

    def __str__(self) -> str:
        if self.kind == "escape":
            return (f"puts a tensor that needs a gradient into {self.where}, where later "
                    "layers read it (reentrant checkpointing would leave it without a graph)")
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


class Replay:
    """What a layer's call changed, put back as the forward saw it while the layer recomputes:
    the values of tensors it wrote in place, the contents of containers it changed (a dict or
    list it was passed, a state object, its own attributes)."""

    __slots__ = ("tensors", "containers", "_after")

    def __init__(self, tensors: List[Tuple[torch.Tensor, torch.Tensor]],
                 containers: List[Tuple[Any, List[Tuple[Any, Any]]]]) -> None:
        self.tensors = tensors  # (the tensor, a copy of its value before the forward)
        self.containers = containers  # (the container, its items before the forward)
        self._after: List[Any] = []

    def __enter__(self) -> None:
        with torch.no_grad():  # the forward's view; the current one kept for after
            self._after = [tensor.clone() for tensor, _ in self.tensors]
            for tensor, before in self.tensors:
                tensor.copy_(before)
        self._after += [_items(container) for container, _ in self.containers]
        for container, before in self.containers:
            _put_items(container, before)

    def __exit__(self, *exc: Any) -> None:
        count = len(self.tensors)
        with torch.no_grad():
            for (tensor, _), after in zip(self.tensors, self._after[:count]):
                tensor.copy_(after)
        for (container, _), after in zip(self.containers, self._after[count:]):
            _put_items(container, after)
        self._after = []


class Probe:
    """What a layer's call can reach, taken before the call; read after it.

    `findings()` says what the call did that checkpointing cannot follow by itself;
    `replay()` what to put back for the recompute.
    """

    def __init__(self, layer: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any],
                 inputs: List[torch.Tensor], positions: Dict[str, int]) -> None:
        walk = _Walk({id(t) for t in inputs})
        names = {index: name for name, index in positions.items()}
        for where, root in _argument_roots(args, kwargs, names):
            walk.visit(where, root)
        for path, module in layer.named_modules():
            items = _items(module) or []
            walk.watch(f"attribute {path + '.' if path else ''}", module, items)
            for key, value in items:  # containers the layer keeps (a list it appends to)
                walk.visit(f"attribute {path + '.' if path else ''}{key}", value, 1)
        self._containers = walk.containers
        self._held = [(where, tensor, _version(tensor)) for where, tensor in walk.tensors
                      if not where.startswith("attribute ")]
        with torch.no_grad():
            self._copies = [tensor.detach().clone() for _where, tensor, _v in self._held]

    def _written(self) -> List[Tuple[str, torch.Tensor, torch.Tensor]]:
        return [(where, tensor, copy) for (where, tensor, version), copy
                in zip(self._held, self._copies) if _version(tensor) != version]

    def findings(self) -> List[Finding]:
        found: List[Finding] = []
        for watched in self._containers:
            changed = watched.changed()
            escaped = next((key for key, value in changed
                            if any(t.requires_grad for t in _tensors_in(value))), None)
            if escaped is not None:
                found.append(Finding("escape", _describe(watched, escaped)))
            elif changed or watched.shrank():
                key = changed[0][0] if changed else None
                found.append(Finding("state", _describe(watched, key)))
        found += [Finding("in-place state", where) for where, _t, _c in self._written()]
        found += [Finding("hidden input", where) for where, tensor, _v in self._held
                  if tensor.requires_grad]
        return found

    def undo(self) -> None:
        """Put back what a call changed, for good (after a trial run), and watch from here."""
        changed = self.replay()
        if changed is not None:
            changed.__enter__()  # the state before the call; what the call left is dropped
        self._held = [(where, tensor, _version(tensor)) for where, tensor, _v in self._held]

    def replay(self) -> Optional[Replay]:
        """What the call changed, to put back for its recompute (None: it changed nothing)."""
        tensors = [(tensor, copy) for _where, tensor, copy in self._written()]
        containers = [(w.container, w.items) for w in self._containers
                      if w.changed() or w.shrank()]
        return Replay(tensors, containers) if tensors or containers else None


def _describe(watched: _Watched, key: Any) -> str:
    if isinstance(watched.container, nn.Module):
        name = f"{watched.where[len('attribute '):]}{key if key is not None else ''}"
        return f"layer attribute '{name}'"
    if watched.where.startswith("attribute "):
        return f"layer attribute '{watched.where[len('attribute '):]}'"
    kind = type(watched.container).__name__
    return f"{watched.where} ({kind})"


_COPY_LIMIT = 1 << 20  # bytes: larger buffers (rotary tables) are watched, not copied


def run_without_grad(call: Callable[[], Any], layer: nn.Module, probe: Probe,
                     devices: List[int]) -> Tuple[bool, Any]:
    """Run `call` as reentrant checkpointing's forward would (no grad), leaving no trace: the
    RNG, the layer's buffers and whatever the call changed come back as they were.
    (whether it ran, its output or its error)."""
    small, large = [], []
    for owner in layer.modules():
        for name, value in owner._buffers.items():
            if value is not None:
                size = value.numel() * value.element_size()
                (small if size <= _COPY_LIMIT else large).append((owner, name))
    watched = [(owner, name, owner._buffers[name], _version(owner._buffers[name]))
               for owner, name in large]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices), \
                buffers_kept(small), RECOMPUTING:
            return True, call()
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

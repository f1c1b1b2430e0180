"""The Adapter row: how one layer family's signature is handled while checkpointing.

An adapter is data. The generic adapter (no class names) covers any layer by reading its
signature: cache arguments are found by name, positionally or by keyword, and neutralised;
when that drops a cache slot from a tuple output, the slot is put back so callers that index
``outputs[1]`` keep working.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

CACHE_ARGS: Tuple[str, ...] = ("past_key_value", "past_key_values", "layer_past", "cache")
CACHE_FLAG = "use_cache"

# What transformers' own checkpointing does for a row's layers (read by select and runtime):
# "works"; "no-op" (the flag is set but nothing is checkpointed); "broken" (its checkpoint
# branch raises or loses gradients); "unsupported" (supports_gradient_checkpointing = False).
TRANSFORMERS_CHECKPOINTING = ("works", "no-op", "broken", "unsupported")

# What happens to a cache passed to a checkpointed layer: "neutralise" (set to None, use_cache
# False); "keep" (the layer only reads it, so the recompute sees the same states); "run-as-is"
# (the model needs the cache the layer fills: a call that carries one is not checkpointed).
CACHE_POLICIES = ("neutralise", "keep", "run-as-is")

# The cache slot of a tuple output: an index, "append" (after everything else), "auto"
# (index 1 for `layer_past`-style layers, else appended), "last" (a fixed-arity output whose
# last element is the cache, None while caching is off: replaced, not inserted), or a
# function of the call's arguments.
CacheSlot = Union[int, str, Callable[[Callable[[str], Any]], Union[int, str]]]


@dataclass(frozen=True)
class Signature:
    """What gcshim needs of a forward's signature: positional index and default per name."""

    positions: Mapping[str, int]
    defaults: Mapping[str, Any]

    @classmethod
    def of(cls, function: Callable[..., Any]) -> Signature:
        # A bound method's signature is its function's without `self`; computed once per
        # function (apply on a 1,000-layer model would otherwise parse it 1,000 times).
        underlying = getattr(function, "__func__", None)
        if inspect.isfunction(underlying) and getattr(function, "__self__", None) is not None:
            return _method_signature(underlying)
        return cls._parse(function, skip=0)

    @classmethod
    def _parse(cls, function: Callable[..., Any], skip: int) -> Signature:
        try:
            params = list(inspect.signature(function).parameters.values())[skip:]
        except (TypeError, ValueError):  # builtins, odd callables: keywords only
            return cls({}, {})
        positions: Dict[str, int] = {}
        defaults: Dict[str, Any] = {}
        for index, param in enumerate(params):
            if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                positions[param.name] = index
            if param.default is not param.empty:
                defaults[param.name] = param.default
        return cls(positions, defaults)

    def mentions_any(self, names: Tuple[str, ...]) -> bool:
        """Whether any of `names` is a parameter (positional or with a default)."""
        return any(name in self.positions or name in self.defaults for name in names)

    def locate(
        self, name: str, args: Tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> Tuple[Optional[Union[str, int]], Any]:
        """Where argument `name` is in this call ("kw", a position, or None) and its value."""
        if name in kwargs:
            return "kw", kwargs[name]
        index = self.positions.get(name)
        if index is not None and index < len(args):
            return index, args[index]
        return None, self.defaults.get(name)


@functools.lru_cache(maxsize=1024)
def _method_signature(function: Callable[..., Any]) -> Signature:
    return Signature._parse(function, skip=1)


def is_legacy_cache(value: Any) -> bool:
    """None, or a tuple (of tuples) of tensors: a cache the layer cannot change in place, so
    the recompute sees what the forward saw and the layer's output keeps its own layout."""
    if value is None:
        return True
    return type(value) is tuple and all(
        is_legacy_cache(item) or type(item).__name__ in ("Tensor", "Parameter") for item in value)


def holds_content(cache: Any) -> bool:
    """Whether a cache argument holds something (past keys/values, a state): what a caller
    passes on purpose. An empty cache object, made because config.use_cache is on, does not."""
    if cache is None:
        return False
    if isinstance(cache, torch.Tensor):
        return cache.numel() > 0
    if type(cache) in (tuple, list):
        return any(holds_content(item) for item in cache)
    length = getattr(cache, "get_seq_length", None)
    if callable(length):
        try:
            return int(length()) > 0
        except Exception:  # a cache type that cannot say: take it as holding something
            return True
    return True


def returns_cache(layer_type: type) -> bool:
    """Whether a layer's tuple output may hold its cache: transformers layers stopped
    returning caches in 5.0 (the Cache object is updated in place)."""
    if layer_type.__module__.startswith("transformers."):
        version = installed_version("transformers")
        return version is None or version < Version("5")
    return True


@dataclass(frozen=True)
class CacheEdit:
    """What gcshim changed in one call, and what it needs to restore the output's shape."""

    changed: Tuple[str, ...]
    flag_dropped: bool
    cache_name: Optional[str]
    passed_cache: Any
    argument: Callable[[str], Any]


@functools.cache
def installed_version(package: str) -> Optional[Version]:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    try:
        return Version(version(package))
    except (PackageNotFoundError, InvalidVersion):
        return None


def _check_choice(row: str, field_name: str, value: object, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"Adapter {row!r}: {field_name} must be one of {choices}, got {value!r}")


@dataclass(frozen=True)
class Adapter:
    """One row of the adapter table.

    classes: layer class names, matched along the class's MRO.
    predicate: or instead, a function of the layer class that says whether the row covers it.
    within: the row holds only for layers inside a module of one of these class names.
    module_prefix: the matched class must be defined under this module (e.g. "transformers.").
    package / versions: the row holds only while `package`'s installed version is in the
        `packaging` specifier `versions` (e.g. ">=4.44,<4.53").
    cache_args / cache_flag: cache argument names set to None, and the flag set to False.
    cache_slot: where a tuple output carries the cache (see CacheSlot).
    cache_policy: see CACHE_POLICIES.
    grad_args: the arguments that can carry gradients (every tensor argument becomes a
        checkpoint input anyway; the tests check these names against the real signatures).
    transformers_checkpointing: see TRANSFORMERS_CHECKPOINTING.
    module_state: attribute names that the layer's (sub)modules reassign in forward (a
        recurrent state): put back as they were for the recompute, so it replays the forward.
    flag_stack: whether, on transformers 4.53-4.x, the stacks above get transformers' flag
        too (so that they turn caching off as the flagged layers do); False where that flag
        changes what the stack computes.
    auto: whether `layers="auto"` picks layers of this row.
    """

    name: str
    classes: Tuple[str, ...] = ()
    predicate: Optional[Callable[[type], bool]] = None
    within: Tuple[str, ...] = ()
    module_prefix: Optional[str] = None
    package: Optional[str] = None
    versions: str = ""
    cache_args: Tuple[str, ...] = CACHE_ARGS
    cache_flag: Optional[str] = CACHE_FLAG
    cache_slot: CacheSlot = "auto"
    cache_policy: str = "neutralise"
    grad_args: Tuple[str, ...] = ("hidden_states",)
    transformers_checkpointing: str = "works"
    module_state: Tuple[str, ...] = ()
    flag_stack: bool = True
    auto: bool = True
    notes: str = ""
    _specifier: SpecifierSet = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError("Adapter.name must be a non-empty string")
        classes = (self.classes,) if isinstance(self.classes, str) else tuple(self.classes)
        if not all(isinstance(name, str) for name in classes):
            raise TypeError(f"Adapter.classes must be class-name strings, got {self.classes!r}")
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "cache_args", tuple(self.cache_args))
        object.__setattr__(self, "grad_args", tuple(self.grad_args))
        object.__setattr__(self, "within", tuple(self.within))
        object.__setattr__(self, "module_state", tuple(self.module_state))
        if self.predicate is not None and not callable(self.predicate):
            raise TypeError(f"Adapter {self.name!r}: predicate must be callable")
        _check_choice(self.name, "cache_policy", self.cache_policy, CACHE_POLICIES)
        _check_choice(self.name, "transformers_checkpointing", self.transformers_checkpointing,
                      TRANSFORMERS_CHECKPOINTING)
        try:
            object.__setattr__(self, "_specifier", SpecifierSet(self.versions))
        except InvalidSpecifier as error:
            raise ValueError(f"Adapter {self.name!r}: bad versions {self.versions!r}") from error
        if self.versions and not self.package:
            raise ValueError(f"Adapter {self.name!r}: versions needs package")
        slot = self.cache_slot
        if not (isinstance(slot, int) or slot in ("auto", "append", "last") or callable(slot)):
            raise TypeError(f"Adapter {self.name!r}: bad cache_slot {slot!r}")

    @property
    def cache_names(self) -> Tuple[str, ...]:
        """The argument names this row treats as caches, flag included."""
        return (*self.cache_args, self.cache_flag) if self.cache_flag else self.cache_args

    @property
    def is_generic(self) -> bool:
        return not self.classes and self.predicate is None

    def holds_for_installed_version(self) -> bool:
        if self.package is None:
            return True
        version = installed_version(self.package)
        return version is not None and self._specifier.contains(version, prereleases=True)

    def covers(self, cls: type, ancestors: Tuple[str, ...] = ()) -> bool:
        """Whether this row names `cls` (or a base class of it), whatever is installed.

        ancestors: class names of the modules the layer sits in (for `within` rows).
        """
        if self.is_generic:
            return True
        if self.within and not set(self.within).intersection(ancestors):
            return False
        if self.predicate is not None:
            return bool(self.predicate(cls))
        return any(
            klass.__name__ in self.classes
            and (self.module_prefix is None or klass.__module__.startswith(self.module_prefix))
            for klass in cls.__mro__
        )

    # -- the call -----------------------------------------------------------------------
    def carries_cache(
        self, signature: Signature, args: Tuple[Any, ...], kwargs: Dict[str, Any]
    ) -> bool:
        return any(signature.locate(name, args, kwargs)[1] is not None for name in self.cache_args)

    def neutralise_caches(
        self, signature: Signature, args: Tuple[Any, ...], kwargs: Dict[str, Any]
    ) -> Tuple[Tuple[Any, ...], Dict[str, Any], Optional[CacheEdit]]:
        """Return args/kwargs with caches off, and what was changed (None if nothing)."""

        def locate(name: str) -> Tuple[Optional[Union[str, int]], Any]:
            return signature.locate(name, args, kwargs)

        def argument(name: str) -> Any:
            return locate(name)[1]

        new_args = list(args)
        new_kwargs = dict(kwargs)

        def put(where: Union[str, int], name: str, value: Any) -> None:
            if where == "kw":
                new_kwargs[name] = value
            else:
                new_args[where] = value

        changed = []
        cache_name, passed_cache = None, None
        for name in self.cache_args:
            where, value = locate(name)
            if cache_name is None and (where is not None or name in signature.positions):
                cache_name, passed_cache = name, value
            if where is not None and value is not None:
                put(where, name, None)
                changed.append(f"{name}=None")
        flag_dropped = False
        if self.cache_flag:
            where, value = locate(self.cache_flag)
            if value:
                flag_dropped = True
                changed.append(f"{self.cache_flag}=False")
                if where is None:  # a default of True: pass False explicitly
                    new_kwargs[self.cache_flag] = False
                else:
                    put(where, self.cache_flag, False)
        if not changed:
            return args, kwargs, None
        edit = CacheEdit(tuple(changed), flag_dropped, cache_name, passed_cache, argument)
        return tuple(new_args), new_kwargs, edit

    def restore_output(self, output: Any, edit: Optional[CacheEdit]) -> Any:
        """Put the cache slot back into a tuple output whose caller asked for a cache.

        The slot gets the cache the caller passed in (not updated), so code that collects or
        converts it keeps working; a layer that returns a single tensor is left as it is.
        """
        if edit is None or not edit.flag_dropped or type(output) is not tuple:
            return output
        slot = self.cache_slot
        if callable(slot):
            slot = slot(edit.argument)
        if slot == "auto":
            slot = 1 if edit.cache_name == "layer_past" else "append"
        if slot == "append":
            return output + (edit.passed_cache,)
        if slot == "last":
            return output[:-1] + (edit.passed_cache,)
        return output[:slot] + (edit.passed_cache,) + output[slot:]


def transformers_row(**fields: Any) -> Adapter:
    """A row for layers defined in transformers, gated on the installed transformers."""
    return Adapter(**{"module_prefix": "transformers.", "package": "transformers", **fields})


GENERIC = Adapter(
    name="generic",
    notes="any layer: caches found by argument name, tensors flattened into checkpoint inputs",
)

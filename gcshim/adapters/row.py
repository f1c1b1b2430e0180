"""The Adapter row: how one layer family's signature is handled while checkpointing.

A row is a record, validated when made, with no behaviour: the registry finds the row for a
layer, the call path (gcshim.core.caches) acts on it. The generic row (no class names) covers
any layer by reading its signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Tuple, Union

from packaging.specifiers import InvalidSpecifier, SpecifierSet

# generation caches by their names across releases; `cache_params` holds the recurrent state of
# Mamba-style layers
CACHE_ARGS: Tuple[str, ...] = ("past_key_value", "past_key_values", "layer_past", "cache",
                               "cache_params")
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
    copied_args: arguments whose tensors the caller writes into after the call (a recurrent
        state it updates in place from the layer's output): the layer gets copies, so that the
        recompute reads what the forward read.
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
    copied_args: Tuple[str, ...] = ()
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
        object.__setattr__(self, "copied_args", tuple(self.copied_args))
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

GENERIC = Adapter(
    name="generic",
    notes="any layer: caches found by argument name, tensors flattened into checkpoint inputs",
)

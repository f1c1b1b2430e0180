"""What the call path needs of a forward's signature: each argument's position and default."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union


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


    def replace(self, name: str, args: Tuple[Any, ...], kwargs: Dict[str, Any], value: Any
                ) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        """The call's args/kwargs with argument `name` set to `value` where the call passed it
        (by keyword if it was not passed)."""
        where, _old = self.locate(name, args, kwargs)
        if isinstance(where, int):
            return args[:where] + (value,) + args[where + 1:], kwargs
        return args, {**kwargs, name: value}


@functools.lru_cache(maxsize=1024)
def _method_signature(function: Callable[..., Any]) -> Signature:
    return Signature._parse(function, skip=1)

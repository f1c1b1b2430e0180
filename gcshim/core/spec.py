"""The `layers` spec: one grammar for apply(layers=...), `gcshim run --layers` and
GCSHIM_LAYERS, compiled into matchers of (path, module).

A string is a comma-separated list of words; a word with a "." is a module path or path glob
("blocks.0", "blocks.*", "encoder.layer.1?"), any other word a class-name glob
("*DecoderLayer") or "auto". A class name never holds a dot; to select a top-level child by
path, pass the module itself.
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Iterable, List, Sequence, Union

from torch import nn

LayerMatcher = Callable[[str, nn.Module], bool]
LayerSpec = Union[str, type, nn.Module, LayerMatcher,
                  Sequence[Union[str, type, nn.Module, LayerMatcher]]]

AUTO = "auto"
CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential)


def parse_layer_string(text: str) -> List[str]:
    """The words of a `layers` string; ValueError if one is empty or holds whitespace."""
    words = [word.strip() for word in text.split(",")]
    if not text.strip() or any(not word or any(c.isspace() for c in word) for word in words):
        raise ValueError(f"layers={text!r}: give 'auto', or comma-separated class-name globs "
                         "('*DecoderLayer,GPT2Block') and module paths ('blocks.0', 'blocks.*')")
    return words


def is_path_word(word: str) -> bool:
    return "." in word


class Instances:
    """Matches the given module instances (a ModuleList, ModuleDict or Sequential stands for
    its children)."""

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        self.modules: List[nn.Module] = []
        for module in modules:
            inner = (list(module.children()) if isinstance(module, CONTAINERS)
                     else [module])
            self.modules.extend(m for m in inner if all(m is not k for k in self.modules))
        self._ids = {id(module) for module in self.modules}

    def __call__(self, _name: str, module: nn.Module) -> bool:
        return id(module) in self._ids


def _word_matcher(word: str) -> Union[str, LayerMatcher]:
    if word == AUTO:
        return AUTO
    if is_path_word(word):
        return lambda name, _module: fnmatch.fnmatchcase(name, word)
    return lambda _name, module: fnmatch.fnmatchcase(type(module).__name__, word)


def _compile_one(spec: object, where: str) -> List[Union[str, LayerMatcher]]:
    if isinstance(spec, str):
        if not spec:
            raise ValueError("layers: an empty string matches nothing")
        return [_word_matcher(word) for word in parse_layer_string(spec)]
    if isinstance(spec, nn.Module):  # before `callable`: a module is callable too
        return [Instances([spec])]
    if isinstance(spec, type):
        if not issubclass(spec, nn.Module):
            raise TypeError(f"layers{where}: {spec.__name__} is not an nn.Module subclass")
        return [lambda _name, module: isinstance(module, spec)]
    if callable(spec):
        return [spec]  # type: ignore[list-item]
    raise TypeError(
        f"layers{where} must be 'auto', a class, a string of class-name globs and module paths, "
        "a module instance (a ModuleList: its children), a callable (name, module) -> bool, "
        f"or a list/tuple of these; got {type(spec).__name__}"
    )


def compile_spec(layers: object) -> List[Union[str, LayerMatcher]]:
    """Turn a `layers` spec into matchers (or AUTO); raise TypeError on anything else."""
    if isinstance(layers, (list, tuple)):
        if not layers:
            raise ValueError("layers: an empty list matches nothing")
        compiled = [m for i, item in enumerate(layers) for m in _compile_one(item, f"[{i}]")]
    else:
        compiled = _compile_one(layers, "")
    instances = [m for m in compiled if isinstance(m, Instances)]
    if len(instances) > 1:  # one matcher for all instances given
        merged = Instances(module for m in instances for module in m.modules)
        compiled = [m for m in compiled if not isinstance(m, Instances)] + [merged]
    return compiled


def describe_spec(layers: object) -> str:
    if isinstance(layers, (list, tuple)):
        return "[" + ", ".join(describe_spec(item) for item in layers) + "]"
    if isinstance(layers, nn.Module):
        return f"<{type(layers).__name__} instance>"
    if isinstance(layers, type):
        return layers.__name__
    if isinstance(layers, str):
        return repr(layers)
    return getattr(layers, "__qualname__", repr(layers))


def check_instances_inside(model: nn.Module, compiled: List[Union[str, LayerMatcher]]) -> None:
    """LookupError for a module instance in `layers` that is not a submodule of `model`."""
    for matcher in compiled:
        if not isinstance(matcher, Instances):
            continue
        inside = {id(module) for _path, module in list(model.named_modules())[1:]}
        for module in matcher.modules:
            if id(module) not in inside:
                raise LookupError(f"gcshim: layers: the {type(module).__name__} instance given "
                                  f"is not a submodule of {type(model).__name__} (the root "
                                  "itself is never checkpointed)")


def path_hint(model: nn.Module, layers: object) -> str:
    """A word without a dot is a class name: say so where it is also a path in the model."""
    words = [word for item in (layers if isinstance(layers, (list, tuple)) else [layers])
             if isinstance(item, str) for word in item.split(",")]
    paths = dict(model.named_modules())
    hits = [word.strip() for word in words if word.strip() in paths and word.strip()]
    if not hits:
        return ""
    return (f". {hits[0]!r} is read as a class name (a word without a dot); to select the "
            f"module at that path pass it (model.{hits[0]}), or its children as "
            f"'{hits[0]}.*'")

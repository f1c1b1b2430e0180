"""Which module instances to checkpoint: the user's `layers` spec, or auto discovery."""

from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from torch import nn

from .adapters import find_adapter, has_specific_adapter
from .hf_flags import defined_in_transformers, is_transformers_layer, transformers_checkpoints
from .patch import patched_forward

LayerMatcher = Callable[[str, nn.Module], bool]
LayerSpec = Union[str, type, LayerMatcher, Sequence[Union[str, type, LayerMatcher]]]

AUTO = "auto"
_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential)


@dataclass
class Selection:
    chosen: List[Tuple[str, nn.Module]] = field(default_factory=list)
    skipped: List[Tuple[str, nn.Module, str]] = field(default_factory=list)
    source: str = ""
    # modules whose transformers flag must go off: its checkpoint branch is broken there
    switch_off: List[nn.Module] = field(default_factory=list)


def annotate(error: BaseException, context: str) -> None:
    """Prefix an exception's message with where it happened, keeping its type and traceback."""
    if error.args and isinstance(error.args[0], str):
        error.args = (f"{context}: {error.args[0]}", *error.args[1:])
    elif not error.args:
        error.args = (context,)


# -- the spec -------------------------------------------------------------------------------
# One grammar for apply(layers=...), `gcshim run --layers` and GCSHIM_LAYERS. A string is a
# comma-separated list of words; a word with a "." is a module path or path glob ("blocks.0",
# "blocks.*", "encoder.layer.1?"), any other word a class-name glob ("*DecoderLayer") or "auto".
# (A class name never holds a dot; to select a top-level child by path, pass the module.)
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
            inner = (list(module.children()) if isinstance(module, _CONTAINERS)
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


def _check_instances_inside(model: nn.Module, compiled: List[Union[str, LayerMatcher]]) -> None:
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


# -- already checkpointed ---------------------------------------------------------------------
def _torch_checkpoint_wrapper_types() -> Tuple[type, ...]:
    try:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import ActivationWrapper
    except Exception:  # torch built without distributed
        return ()
    return (ActivationWrapper,)


_BY_GCSHIM = "already checkpointed by an earlier gcshim.apply"
_BY_TRANSFORMERS = "transformers' own gradient checkpointing is on"


def _already_checkpointed(module: nn.Module, wrapper_types: Tuple[type, ...]) -> Optional[str]:
    if patched_forward(module) is not None:
        return _BY_GCSHIM
    if wrapper_types and isinstance(module, wrapper_types):
        return "is a torch CheckpointWrapper"
    if transformers_checkpoints(module):
        return _BY_TRANSFORMERS
    return None


def _reasons_by_path(model: nn.Module) -> Dict[str, str]:
    """Paths of modules under which everything is already checkpointed, with the reason."""
    wrapper_types = _torch_checkpoint_wrapper_types()
    reasons = {}
    for path, module in model.named_modules():
        reason = _already_checkpointed(module, wrapper_types)
        if reason is not None:
            reasons[path] = reason
    return reasons


def _ancestry(path: str) -> List[str]:
    """`path` and the paths above it, nearest first (the root is path "")."""
    parts = path.split(".") if path else []
    return [".".join(parts[:depth]) for depth in range(len(parts), -1, -1)]


def ancestor_classes(model: nn.Module, path: str) -> Tuple[str, ...]:
    """Class names of the modules above `path` in `model`, nearest first."""
    names = []
    for above in _ancestry(path)[1:]:
        names.append(type(model.get_submodule(above)).__name__ if above else type(model).__name__)
    return tuple(names)


def _covering_reason(path: str, reasons: Dict[str, str]) -> Optional[str]:
    """The reason of the nearest ancestor-or-self in `reasons`."""
    for above in _ancestry(path):
        reason = reasons.get(above)
        if reason is not None:
            return reason
    return None


# -- discovery ---------------------------------------------------------------------------------
def _is_block(module: nn.Module) -> bool:
    """A module worth checkpointing on its own: it has sub-layers and parameters, and it is
    called (a ModuleList/ModuleDict of stages is only iterated, never called)."""
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        return False
    return next(module.children(), None) is not None and next(module.parameters(), None) is not None


def _repeated_block_classes(model: nn.Module) -> List[type]:
    """Classes that appear at least twice as blocks of one ModuleList/Sequential."""
    found: List[type] = []
    for module in model.modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        counts = Counter(type(child) for child in module.children() if _is_block(child))
        found.extend(cls for cls, n in counts.items() if n >= 2 and cls not in found)
    return found


def _no_split_class_names(model: nn.Module) -> List[str]:
    names: List[str] = []
    for module in model.modules():
        declared = getattr(module, "_no_split_modules", None)
        if isinstance(declared, (list, tuple, set, frozenset)):
            names.extend(n for n in sorted(declared) if isinstance(n, str) and n not in names)
    return names


DECLARED = "declared"
_TABLE, _LAYER, _NO_SPLIT = ("adapter table", "transformers GradientCheckpointingLayer",
                             "transformers _no_split_modules")


def _declared_source(matches: List[Tuple[str, nn.Module]]) -> str:
    """Which of the declared sources the matches came from, in a fixed order."""
    found = set()
    for _path, module in matches:
        if has_specific_adapter(module):
            found.add(_TABLE)
        elif is_transformers_layer(module):
            found.add(_LAYER)
        else:
            found.add(_NO_SPLIT)
    return " + ".join(source for source in (_TABLE, _LAYER, _NO_SPLIT) if source in found)


def _auto_strategies(model: nn.Module) -> Iterable[Tuple[str, LayerMatcher]]:
    """What the model declares (adapter table rows and _no_split_modules, together: a VLM's
    text layers may have no row while its vision layers do; transformers'
    GradientCheckpointingLayer instances where neither names anything, and inside a
    _no_split_modules block, as the finer choice), then repeated blocks."""
    no_split = _no_split_class_names(model)
    counts = Counter(type(module).__name__ for module in model.modules())
    if any(counts[name] >= 2 for name in no_split):
        # _no_split_modules also names one-off parts (ViTEmbeddings beside ViTLayer) that must
        # stay on one device; the layers to checkpoint are the repeated ones
        no_split = [name for name in no_split if counts[name] >= 2]
    units = [path for path, module in model.named_modules()
             if type(module).__name__ in no_split or has_specific_adapter(module)]

    def checkpointing_layer(name: str, module: nn.Module) -> bool:
        # beside units the model declares (SEW-D's encoder layers), its small conv layers
        # would be checkpointed too, for no memory saved under reentrant checkpointing
        return is_transformers_layer(module) and (
            not units or any(name.startswith(unit + ".") for unit in units))

    def declared(name: str, module: nn.Module) -> bool:
        if has_specific_adapter(module) or checkpointing_layer(name, module):
            return True
        # a _no_split_modules class around declared layers would hide those (finer) layers
        return type(module).__name__ in no_split and not any(
            has_specific_adapter(inner) or checkpointing_layer(f"{name}.{path}", inner)
            for path, inner in module.named_modules() if path)

    yield DECLARED, declared
    repeated = tuple(_repeated_block_classes(model))
    if repeated:
        yield "repeated blocks", lambda _name, module: type(module) in repeated


def candidate_classes(model: nn.Module) -> List[str]:
    """Block classes a user could name: repeated blocks, or else every composite class."""
    repeated = _repeated_block_classes(model)
    if repeated:
        return [cls.__name__ for cls in repeated]
    names: List[str] = []
    for _path, module in list(model.named_modules())[1:]:
        name = type(module).__name__
        if _is_block(module) and name not in names:
            names.append(name)
    return names


def candidates_text(model: nn.Module) -> str:
    """What a user could name instead: block classes, and the paths of the first one."""
    classes = candidate_classes(model)
    if not classes:
        return "Candidate block classes: none"
    paths = [path for path, module in list(model.named_modules())[1:]
             if type(module).__name__ == classes[0]][:2]
    return (f"Candidate block classes: {', '.join(classes)} (or module paths such as "
            f"{', '.join(repr(p) for p in paths)})")


def _path_hint(model: nn.Module, layers: object) -> str:
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


def _outermost_matches(
    model: nn.Module, matchers: List[LayerMatcher]
) -> List[Tuple[str, nn.Module]]:
    """Modules (never the root) that a matcher accepts, skipping those inside a match."""
    matches: List[Tuple[str, nn.Module]] = []
    inside = None  # "<path of the latest match>."; named_modules lists a subtree contiguously
    for path, module in list(model.named_modules())[1:]:
        if inside is not None and path.startswith(inside):
            continue
        for matcher in matchers:
            try:
                accepted = matcher(path, module)
            except BaseException as error:
                annotate(error, f"gcshim: layers callable failed on {path!r} "
                                f"({type(module).__name__})")
                raise
            if accepted:
                matches.append((path, module))
                inside = path + "."
                break
    return matches




def _take_over_from_transformers(
    path: str,
    module: nn.Module,
    reasons: Dict[str, str],
    modules: Dict[str, nn.Module],
    selection: Selection,
) -> Optional[str]:
    """Checkpoint a layer transformers claims to checkpoint, if the table knows it does not, or
    if the layer's class, the stack calling it or the one holding transformers' flag is not
    transformers' own: a
    subclass or copy in user code may take a tensor needing a gradient by keyword
    (transformers' reentrant call closes over it: a lost gradient or a failed backward), hand
    tensors on through containers or keep state, none of which transformers' checkpointing
    looks for; a stack of user code may not act on the flag at all."""
    verdict = find_adapter(module).transformers_checkpointing
    flagged = next(above for above in _ancestry(path) if reasons.get(above) == _BY_TRANSFORMERS)
    stack = next((modules[above] for above in _ancestry(path)[1:]
                  if not isinstance(modules[above], _CONTAINERS)), module)
    if verdict == "works" and all(defined_in_transformers(type(owner))
                                  for owner in (module, modules[flagged], stack)):
        return _BY_TRANSFORMERS
    if verdict != "no-op":  # its branch would still run: switch transformers' flag off there
        for above in _ancestry(path):
            flagged = modules[above]
            if reasons.get(above) == _BY_TRANSFORMERS and flagged not in selection.switch_off:
                selection.switch_off.append(flagged)
    return None


def select(model: nn.Module, layers: object) -> Selection:
    """Choose the layers to checkpoint; LookupError if the spec matches none."""
    compiled = compile_spec(layers)
    _check_instances_inside(model, compiled)
    explicit = [m for m in compiled if m is not AUTO]
    selection = Selection()
    matches = _outermost_matches(model, explicit) if explicit else []
    sources = ["layers=" + describe_spec(layers)] if matches else []
    if AUTO in compiled:
        for source, matcher in _auto_strategies(model):
            auto_matches = _outermost_matches(model, [*explicit, matcher])
            if len(auto_matches) > len(matches):
                if source == DECLARED:
                    source = _declared_source(auto_matches[len(matches):])
                matches, sources = auto_matches, [*sources, "auto: " + source]
                break
    if not matches:
        what = "auto discovery" if AUTO in compiled else f"layers={describe_spec(layers)}"
        raise LookupError(f"gcshim: {what} matched no layer in {type(model).__name__} (the "
                          f"root itself is never checkpointed). {candidates_text(model)}"
                          + _path_hint(model, layers))
    reasons = _reasons_by_path(model)
    patched = [path for path, reason in reasons.items() if reason == _BY_GCSHIM]
    modules = dict(model.named_modules())
    for path, module in matches:
        reason = _covering_reason(path, reasons)
        if reason == _BY_TRANSFORMERS:
            reason = _take_over_from_transformers(path, module, reasons, modules, selection)
        if reason is None and any(inner.startswith(path + ".") for inner in patched):
            reason = "holds layers already checkpointed by gcshim"
        if reason is None:
            selection.chosen.append((path, module))
        else:
            selection.skipped.append((path, module, reason))
    selection.source = " + ".join(sources)
    return selection

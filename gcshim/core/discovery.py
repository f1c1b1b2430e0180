"""Auto discovery: the layers a model declares (the adapter table's rows, and what each
framework declares: transformers' GradientCheckpointingLayer and _no_split_modules), else the
blocks that repeat inside a ModuleList/Sequential."""

from __future__ import annotations

from collections import Counter
from typing import Iterable, List, Tuple

from torch import nn

from ..adapters import has_specific_adapter
from . import hooks
from .spec import LayerMatcher


def _is_block(module: nn.Module) -> bool:
    """A module worth checkpointing on its own: it has sub-layers and parameters, and it is
    called (a ModuleList/ModuleDict of stages is only iterated, never called)."""
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        return False
    return next(module.children(), None) is not None and next(module.parameters(), None) is not None


def repeated_block_classes(model: nn.Module) -> List[type]:
    """Classes that appear at least twice as blocks of one ModuleList/Sequential."""
    found: List[type] = []
    for module in model.modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        counts = Counter(type(child) for child in module.children() if _is_block(child))
        found.extend(cls for cls, n in counts.items() if n >= 2 and cls not in found)
    return found


def _unit_class_names(model: nn.Module) -> List[str]:
    """Units the frameworks say the model keeps whole (transformers' _no_split_modules)."""
    names: List[str] = []
    for framework in hooks.frameworks():
        names.extend(n for n in framework.unit_classes(model) if n not in names)
    return names


def _framework_layer(module: nn.Module) -> bool:
    """A layer a framework itself means to checkpoint (transformers'
    GradientCheckpointingLayer)."""
    return any(framework.is_layer(module) for framework in hooks.frameworks())


def _holds_attention(module: nn.Module) -> bool:
    """Whether a module inside it is an attention module (by its class name)."""
    return any("Attention" in type(inner).__name__ for inner in module.modules())


DECLARED = "declared"
_TABLE = "adapter table"


def declared_source(matches: List[Tuple[str, nn.Module]]) -> str:
    """Which of the declared sources the matches came from, in a fixed order."""
    units = " / ".join(f.unit_source for f in hooks.frameworks())
    found = set()
    for _path, module in matches:
        if has_specific_adapter(module):
            found.add(_TABLE)
        else:
            for framework in hooks.frameworks():
                if framework.is_layer(module):
                    found.add(framework.layer_source)
                    break
            else:
                found.add(units)
    order = [_TABLE, *(f.layer_source for f in hooks.frameworks()), units]
    return " + ".join(source for source in order if source in found)


def auto_strategies(model: nn.Module) -> Iterable[Tuple[str, LayerMatcher]]:
    """What the model declares (adapter table rows and _no_split_modules, together: a VLM's
    text layers may have no row while its vision layers do; transformers'
    GradientCheckpointingLayer instances where neither names anything, inside a
    _no_split_modules block, as the finer choice, and beside them where they hold attention),
    then repeated blocks."""
    no_split = _unit_class_names(model)
    counts = Counter(type(module).__name__ for module in model.modules())
    if any(counts[name] >= 2 for name in no_split):
        # _no_split_modules also names one-off parts (ViTEmbeddings beside ViTLayer) that must
        # stay on one device; the layers to checkpoint are the repeated ones
        no_split = [name for name in no_split if counts[name] >= 2]
    units = [path for path, module in model.named_modules()
             if type(module).__name__ in no_split or has_specific_adapter(module)]

    def checkpointing_layer(name: str, module: nn.Module) -> bool:
        if not _framework_layer(module):
            return False
        if not units or any(name.startswith(unit + ".") for unit in units):
            return True
        # Beside the units the model declares: a second stack of attention layers (CLIPSeg's
        # decoder, beside its frozen CLIP encoders), but not small conv layers (SEW-D's
        # feature extractor beside its encoder layers: no memory saved under reentrant).
        return _holds_attention(module) and not any(
            unit.startswith(name + ".") for unit in units)

    def declared(name: str, module: nn.Module) -> bool:
        if has_specific_adapter(module) or checkpointing_layer(name, module):
            return True
        # a _no_split_modules class around declared layers would hide those (finer) layers
        return type(module).__name__ in no_split and not any(
            has_specific_adapter(inner) or checkpointing_layer(f"{name}.{path}", inner)
            for path, inner in module.named_modules() if path)

    yield DECLARED, declared
    repeated = tuple(repeated_block_classes(model))
    if repeated:
        yield "repeated blocks", lambda _name, module: type(module) in repeated


def candidate_classes(model: nn.Module) -> List[str]:
    """Block classes a user could name: repeated blocks, or else every composite class."""
    repeated = repeated_block_classes(model)
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

"""Which module instances to checkpoint: the user's `layers` spec, or auto discovery, less
the layers something else already checkpoints (an earlier apply, a CheckpointWrapper, a
framework's own checkpointing, unless gcshim must take that over)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from torch import nn

from ..adapters import find_adapter
from ..errors import annotate
from . import hooks
from .discovery import DECLARED, auto_strategies, candidates_text, declared_source
from .patching import patched_forward
from .spec import (
    AUTO,
    LayerMatcher,
    check_instances_inside,
    compile_spec,
    describe_spec,
    path_hint,
)


@dataclass
class Selection:
    chosen: List[Tuple[str, nn.Module]] = field(default_factory=list)
    skipped: List[Tuple[str, nn.Module, str]] = field(default_factory=list)
    source: str = ""
    # (framework, module) whose own checkpointing flag must go off: gcshim takes it over there
    switch_off: List[Tuple[hooks.Framework, nn.Module]] = field(default_factory=list)


# -- already checkpointed ---------------------------------------------------------------------
def _torch_checkpoint_wrapper_types() -> Tuple[type, ...]:
    try:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import ActivationWrapper
    except Exception:  # torch built without distributed
        return ()
    return (ActivationWrapper,)


_BY_GCSHIM = "already checkpointed by an earlier gcshim.apply"


def _already_checkpointed(module: nn.Module, wrapper_types: Tuple[type, ...]
                          ) -> Optional[Tuple[str, Optional[hooks.Framework]]]:
    if patched_forward(module) is not None:
        return _BY_GCSHIM, None
    if wrapper_types and isinstance(module, wrapper_types):
        return "is a torch CheckpointWrapper", None
    for framework in hooks.frameworks():
        if framework.checkpoints(module):
            return f"{framework.own_checkpointing} is on", framework
    return None


def _reasons_by_path(model: nn.Module) -> Dict[str, Tuple[str, Optional[hooks.Framework]]]:
    """Paths of modules under which everything is already checkpointed: the reason, and the
    framework whose own checkpointing it is (None: gcshim's, a CheckpointWrapper)."""
    wrapper_types = _torch_checkpoint_wrapper_types()
    reasons = {}
    for path, module in model.named_modules():
        found = _already_checkpointed(module, wrapper_types)
        if found is not None:
            reasons[path] = found
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


def _covering_reason(path: str, reasons: Dict[str, Tuple[str, Optional[hooks.Framework]]]
                     ) -> Tuple[Optional[str], Optional[hooks.Framework]]:
    """The reason (and framework) of the nearest ancestor-or-self in `reasons`."""
    for above in _ancestry(path):
        found = reasons.get(above)
        if found is not None:
            return found
    return None, None


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




def select(model: nn.Module, layers: object) -> Selection:
    """Choose the layers to checkpoint; LookupError if the spec matches none."""
    compiled = compile_spec(layers)
    check_instances_inside(model, compiled)
    explicit = [m for m in compiled if m is not AUTO]
    selection = Selection()
    matches = _outermost_matches(model, explicit) if explicit else []
    sources = ["layers=" + describe_spec(layers)] if matches else []
    if AUTO in compiled:
        for source, matcher in auto_strategies(model):
            auto_matches = _outermost_matches(model, [*explicit, matcher])
            if len(auto_matches) > len(matches):
                if source == DECLARED:
                    source = declared_source(auto_matches[len(matches):])
                matches, sources = auto_matches, [*sources, "auto: " + source]
                break
    if not matches:
        what = "auto discovery" if AUTO in compiled else f"layers={describe_spec(layers)}"
        raise LookupError(f"gcshim: {what} matched no layer in {type(model).__name__} (the "
                          f"root itself is never checkpointed). {candidates_text(model)}"
                          + path_hint(model, layers))
    reasons = _reasons_by_path(model)
    patched = [path for path, (reason, _f) in reasons.items() if reason == _BY_GCSHIM]
    modules = dict(model.named_modules())
    for path, module in matches:
        reason, framework = _covering_reason(path, reasons)
        if framework is not None:  # the framework checkpoints it: leave it, or take it over
            above = [modules[p] for p in _ancestry(path)[1:]]
            adapter = find_adapter(module)
            keep, flagged = framework.take_over(path, module, above, adapter)
            if keep and framework.stands_by(module, adapter):
                selection.chosen.append((path, module))  # the framework's, but for some calls
                continue
            if not keep:
                reason = None
                selection.switch_off.extend((framework, m) for m in flagged
                                            if (framework, m) not in selection.switch_off)
        if reason is None and any(inner.startswith(path + ".") for inner in patched):
            reason = "holds layers already checkpointed by gcshim"
        if reason is None:
            selection.chosen.append((path, module))
        else:
            selection.skipped.append((path, module, reason))
    selection.source = " + ".join(sources)
    return selection

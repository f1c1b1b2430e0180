"""transformers' answers to the core's questions (see gcshim.core.hooks).

Registered when gcshim is imported; transformers itself is never imported here (models are
recognised by their attributes and the modules their classes come from).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from packaging.version import Version
from torch import nn

from ...adapters import Adapter, versions
from ...core import hooks
from ...core.patching import iter_patched
from ...core.signature import Signature
from ...core.torch_checkpoint import CheckpointOptions
from ...core.undo import UndoLog
from . import flags
from .flags import defined_in_transformers

_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential)


def _stand_by(module: nn.Module, undo: UndoLog) -> None:
    """transformers' own flag on `module` becomes a Flag (false to code passing a cache that
    holds something); back to True on undo, unless changed since."""
    flags.stand_by(module)
    undo.record(flags.stand_down, module)


class Transformers(hooks.Framework):
    name = "transformers"
    own_checkpointing = "transformers' own gradient checkpointing"
    call_flag = flags.FLAG
    layer_source = "transformers GradientCheckpointingLayer"
    unit_source = "transformers _no_split_modules"

    def unit_classes(self, model: nn.Module) -> List[str]:
        names: List[str] = []
        for module in model.modules():
            declared = getattr(module, "_no_split_modules", None)
            if isinstance(declared, (list, tuple, set, frozenset)):
                names.extend(n for n in sorted(declared) if isinstance(n, str) and n not in names)
        return names

    def is_layer(self, module: nn.Module) -> bool:
        return flags.is_transformers_layer(module)

    def checkpoints(self, module: nn.Module) -> bool:
        return flags.transformers_checkpoints(module)

    def take_over(self, path: str, module: nn.Module, above: Sequence[nn.Module],
                  adapter: Adapter) -> Tuple[bool, List[nn.Module]]:
        """transformers' own checkpointing of a layer is trusted only where the table says it
        works and the layer's class, the stack calling it and the module holding the flag are
        all transformers' own: a subclass or copy in user code may take a tensor needing a
        gradient by keyword (transformers' reentrant call closes over it: a lost gradient or a
        failed backward), hand tensors on through containers or keep state, none of which
        transformers' checkpointing looks for; a stack of user code may not act on the flag."""
        verdict = adapter.transformers_checkpointing
        chain = [module, *above]
        flagged = next(m for m in chain if flags.transformers_checkpoints(m))
        stack = next((m for m in above if not isinstance(m, _CONTAINERS)), module)
        if verdict == "works" and all(defined_in_transformers(type(owner))
                                      for owner in (module, flagged, stack)):
            return True, []
        if verdict == "no-op":  # its branch does nothing: no flag to switch off
            return False, []
        # its branch would still run: switch transformers' flag off there
        return False, [m for m in chain if flags.transformers_checkpoints(m)]

    def stands_by(self, module: nn.Module, adapter: Adapter) -> bool:
        # transformers drops a cache that holds something (a learned prefix) from the calls it
        # checkpoints; gcshim takes those calls (see flags.Flag)
        return Signature.of(module.forward).mentions_any(adapter.cache_args)

    def on_patched(self, layer: nn.Module, owner: nn.Module, options: CheckpointOptions,
                   adapter: Adapter, undo: UndoLog) -> Optional[Any]:
        if flags.transformers_checkpoints(layer):  # stands by: on_applied sees to its flag
            return None
        # transformers' own layer branch would null a cache the row says must stay: no flag
        if adapter.cache_policy != "neutralise" or not flags.should_mark(layer, owner):
            return None
        saved = flags.mark(layer, options)
        undo.record(lambda marked: flags.unmark(marked, saved), layer)
        return saved

    def on_applied(self, model: nn.Module, layers: Sequence[Tuple[str, nn.Module, Adapter]],
                   options: CheckpointOptions, undo: UndoLog) -> None:
        marked = [path for path, layer, adapter in layers
                  if adapter.flag_stack and flags.is_marked(layer)]
        for stack in flags.stacks_to_mark(model, marked):
            saved = flags.mark(stack, options)
            undo.record(lambda marked, saved=saved: flags.unmark(marked, saved), stack)
        # Where transformers checkpoints a layer gcshim has patched (or the stack above it,
        # before 4.52), calls that pass a cache holding something go to gcshim's wrapper
        # uncheckpointed, for gcshim to take them with the cache kept (see flags.Flag).
        patched = [path for path, _module, _wrapper in iter_patched(model)]
        for path, module in model.named_modules():
            if vars(module).get(flags.FLAG) is True and flags.transformers_checkpoints(module) \
                    and any(not path or inner == path or inner.startswith(path + ".")
                            for inner in patched):
                _stand_by(module, undo)

    def switch_off(self, modules: Sequence[nn.Module], undo: UndoLog) -> None:
        for module in modules:
            saved = flags.switch_off(module)
            undo.record(lambda switched, saved=saved: flags.switch_back(switched, saved), module)

    def release(self, layer: nn.Module) -> None:
        passthrough = layer.__dict__.get(flags.FUNC)
        if isinstance(passthrough, flags.PassThrough) and passthrough.saved is not None:
            flags.unmark(layer, passthrough.saved)

    def handles_call(self, layer: nn.Module, adapter: Adapter) -> bool:
        # transformers' own checkpointing switched on after apply(): let it do the work, once,
        # unless the adapter table knows it does nothing (or breaks) for this layer
        return adapter.transformers_checkpointing == "works" and flags.transformers_checkpoints(
            layer)

    def owns(self, cls: type) -> bool:
        return defined_in_transformers(cls)

    def returns_cache(self, cls: type) -> Optional[bool]:
        # transformers layers stopped returning caches in 5.0 (the Cache object is updated
        # in place)
        if not defined_in_transformers(cls):
            return None
        version = versions.installed_version("transformers")
        return version is None or version < Version("5")

    def cache_policy(self, layer: nn.Module) -> Optional[str]:
        # transformers >= 5.15 marks layers that only read the cache (the replay reads the same)
        if getattr(type(layer), "_can_checkpoint_with_cache", False) is True:
            return "keep"
        return None

    def route_switches(self, apply: Any, user_chose_gcshim: bool) -> Any:
        from .switches import route

        return route(apply, user_chose_gcshim)

    def describe(self, model: nn.Module) -> Optional[Dict[str, Any]]:
        if not flags.is_transformers_model(model):
            return None
        import transformers

        return {"transformers": transformers.__version__,
                "supports_gradient_checkpointing": bool(model.supports_gradient_checkpointing)}

    def layer_verdict(self, adapter: Adapter) -> str:
        return adapter.transformers_checkpointing

    def build(self, cls: type) -> Optional[nn.Module]:
        if not (hasattr(cls, "model_type") and hasattr(cls, "to_dict")):  # not a config
            return None
        from transformers import AutoModel

        return AutoModel.from_config(cls())

    def marked(self, module: nn.Module) -> bool:
        return flags.is_marked(module)

    def plain_state(self, state: Dict[str, Any]) -> None:
        flags.plain_state(state)


TRANSFORMERS = Transformers()
hooks.register(TRANSFORMERS)

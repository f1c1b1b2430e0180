"""What the core asks of a framework that has checkpointing of its own (transformers).

Selection, patching, the call path and copies never name a framework: they ask the frameworks
registered here (`gcshim.integrations.transformers` registers transformers' on import). Each
method's default is the answer for plain PyTorch code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from ..adapters import Adapter
    from .torch_checkpoint import CheckpointOptions
    from .undo import UndoLog


class Framework:
    """One framework's answers (this base class: a framework that checkpoints nothing)."""

    name = "plain torch"
    # the attribute whose truth (on the layer or its class) must hold for `handles_call` to:
    # the call path reads it first, and asks only then (None: it never takes calls over)
    call_flag: Optional[str] = None
    # how messages name its checkpointing ("transformers' own gradient checkpointing")
    own_checkpointing = "its own checkpointing"
    # how the report names the layers each discovery source finds
    layer_source = ""
    unit_source = ""

    # -- selection ----------------------------------------------------------------------------
    def unit_classes(self, model: nn.Module) -> List[str]:
        """Class names the model declares as units that stay whole (coarse)."""
        return []

    def is_layer(self, module: nn.Module) -> bool:
        """Whether the framework itself means to checkpoint this module (fine)."""
        return False

    def checkpoints(self, module: nn.Module) -> bool:
        """Whether the framework's own checkpointing is on for this module (not by gcshim)."""
        return False

    def take_over(self, path: str, module: nn.Module, above: Sequence[nn.Module],
                  adapter: Adapter) -> Tuple[bool, List[nn.Module]]:
        """For a layer the framework checkpoints itself: (leave it to the framework, modules
        whose flag must go off for gcshim to do it instead). `above`: the modules from the
        layer's parent up to the root."""
        return True, []

    def stands_by(self, module: nn.Module, adapter: Adapter) -> bool:
        """For a layer left to the framework: patch it anyway, so that the calls its own
        checkpointing cannot do (with a cache that holds something) are gcshim's."""
        return False

    # -- patching -----------------------------------------------------------------------------
    def on_patched(self, layer: nn.Module, owner: nn.Module, options: CheckpointOptions,
                   adapter: Adapter, undo: UndoLog) -> Optional[Any]:
        """Make the framework's view agree with gcshim checkpointing `layer`; returns what a
        copy of the layer needs to be made plain (or None), having recorded the undo."""
        return None

    def on_applied(self, model: nn.Module, layers: Sequence[Tuple[str, nn.Module, Adapter]],
                   options: CheckpointOptions, undo: UndoLog) -> None:
        """After every layer is patched: marks the framework needs above them."""

    def switch_off(self, modules: Sequence[nn.Module], undo: UndoLog) -> None:
        """Turn the framework's own checkpointing off on `modules`."""

    def release(self, layer: nn.Module) -> None:
        """Take the framework's marks off a layer whose patch no Handle recorded (a kept deep
        copy's), from what the marks themselves saved."""

    # -- the call -----------------------------------------------------------------------------
    def handles_call(self, layer: nn.Module, adapter: Adapter) -> bool:
        """Whether the framework's checkpointing, switched on after apply, does this call."""
        return False

    def owns(self, cls: type) -> bool:
        """Whether a class is the framework's own code (not a subclass or copy elsewhere)."""
        return False

    def returns_cache(self, cls: type) -> Optional[bool]:
        """Whether the framework's layers of `cls` still return their cache (None: not its)."""
        return None

    def cache_policy(self, layer: nn.Module) -> Optional[str]:
        """A cache policy the layer class itself declares (None: the adapter row's)."""
        return None

    # -- the ways in ----------------------------------------------------------------------------
    def route_switches(self, apply: Callable[[nn.Module, Optional[bool]], Any],
                       user_chose_gcshim: bool) -> Callable[[], None]:
        """Route the framework's own checkpointing switches through `apply` (gcshim.auto);
        returns the undo."""
        return lambda: None

    def describe(self, model: nn.Module) -> Optional[Dict[str, Any]]:
        """What `gcshim inspect` reports of the framework for this model (None: not its)."""
        return None

    def layer_verdict(self, adapter: Adapter) -> str:
        """What the framework's own checkpointing does for a layer of this row."""
        return "n/a"

    def build(self, cls: type) -> Optional[nn.Module]:
        """A model of the framework's from a class that is not a module (a config class)."""
        return None

    # -- copies -------------------------------------------------------------------------------
    def marked(self, module: nn.Module) -> bool:
        """Whether the framework's marks made for gcshim are still on the module."""
        return False

    def plain_state(self, state: Dict[str, Any]) -> None:
        """Undo, in a module's state as pickled or copied, the marks gcshim made."""


_frameworks: List[Framework] = []


def register(framework: Framework) -> None:
    if all(type(known) is not type(framework) for known in _frameworks):
        _frameworks.append(framework)


def frameworks() -> List[Framework]:
    return _frameworks

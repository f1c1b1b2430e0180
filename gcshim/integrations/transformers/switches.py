"""transformers' checkpointing switches, routed through gcshim where transformers' own falls short.

`gradient_checkpointing_enable()` / `activation_checkpointing_enable()` (what
`TrainingArguments(gradient_checkpointing=True)` calls) go to gcshim when the model's own
checkpointing is absent (`supports_gradient_checkpointing=False`) or raises; otherwise
transformers' own path runs, and gcshim then takes over only the layers the adapter table knows
it does nothing for or breaks. A GCSHIM_LAYERS / REENTRANT / EVERY / BUDGET / OFFLOAD setting means
the user chose gcshim: it replaces transformers' own path. The disable calls remove gcshim too.

The methods are replaced on `PreTrainedModel` by plain functions, not wrapt proxies: transformers
5.24 decides whether a subclass overrides `gradient_checkpointing_enable` by comparing the bound
method's `__func__` with the class attribute, which a proxy would make differ for every model.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import wrapt
from torch import nn

from ... import api
from ..._log import logger, notice_once

# applies gcshim to a model as the way in was told to (settings), keeping the script's
# use_reentrant unless the settings say otherwise; raises LookupError where nothing matches
Apply = Callable[[nn.Module, Optional[bool]], Any]

ENABLE = ("gradient_checkpointing_enable", "activation_checkpointing_enable")
DISABLE = ("gradient_checkpointing_disable", "activation_checkpointing_disable")
_KWARGS_NAMES = ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")

_inside = threading.local()  # one alias calls the other: only the outermost call decides


def _checkpoint_kwargs(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    for name in _KWARGS_NAMES:
        if kwargs.get(name):
            return dict(kwargs[name])
    return dict(args[0]) if args and isinstance(args[0], dict) else {}


class TransformersSwitches:
    """The replaced enable/disable methods of PreTrainedModel, and their undoing."""

    def __init__(self, apply: Apply, user_chose_gcshim: bool) -> None:
        self.apply = apply
        # settings that choose what gcshim does were given: gcshim replaces transformers' own
        self.user_chose_gcshim = user_chose_gcshim
        self._originals: List[Tuple[type, str, Callable[..., Any]]] = []

    def install(self, pretrained_model: type) -> None:
        if self._originals:
            return
        for name in ENABLE + DISABLE:
            original = pretrained_model.__dict__.get(name)
            if original is None:  # activation_* only exist from transformers 5.24
                continue
            replacement = self._enable(original) if name in ENABLE else self._disable(original)
            replacement.__name__ = name
            replacement.__qualname__ = f"{pretrained_model.__name__}.{name}"
            replacement.__doc__ = original.__doc__
            replacement.__wrapped__ = original  # type: ignore[attr-defined]
            setattr(pretrained_model, name, replacement)
            self._originals.append((pretrained_model, name, original))
        logger.debug("gcshim: transformers' checkpointing switches routed through gcshim")

    def uninstall(self) -> None:
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)
        self._originals = []

    def _enable(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def enable(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
            if getattr(_inside, "on", False):
                return original(model, *args, **kwargs)
            _inside.on = True
            try:
                return self._decide(original, model, args, kwargs)
            finally:
                _inside.on = False

        return enable

    def _disable(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def disable(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
            if not getattr(_inside, "on", False):
                api.remove(model)
            return original(model, *args, **kwargs)

        return disable

    def _decide(self, original: Callable[..., Any], model: nn.Module, args: Tuple[Any, ...],
                kwargs: Dict[str, Any]) -> Optional[Any]:
        use_reentrant = _checkpoint_kwargs(args, kwargs).get("use_reentrant")
        name = type(model).__name__
        if self.user_chose_gcshim:
            notice_once(f"hf-settings:{name}", f"gcshim: {name}: GCSHIM_* settings given, "
                        "gcshim checkpoints it", logging.INFO)
            self.apply(model, use_reentrant)
            return None
        if not getattr(model, "supports_gradient_checkpointing", False):
            notice_once(f"hf-absent:{name}", f"gcshim: {name} has no checkpointing of its own; "
                        "gcshim checkpoints it", logging.INFO)
            self.apply(model, use_reentrant)
            return None
        try:
            result = original(model, *args, **kwargs)
        except ValueError as error:  # transformers refuses this model
            notice_once(f"hf-raised:{name}", f"gcshim: transformers' checkpointing raised for "
                        f"{name} ({error}); gcshim checkpoints it", logging.INFO)
            self.apply(model, use_reentrant)
            return None
        try:  # the layers transformers' flag does nothing for, or breaks (the adapter table)
            self.apply(model, use_reentrant)
        except LookupError:
            pass
        return result


def route(apply: Apply, user_chose_gcshim: bool) -> Callable[[], None]:
    """Route PreTrainedModel's switches through gcshim now, or when transformers is imported;
    returns the undo."""
    switches = TransformersSwitches(apply, user_chose_gcshim)
    state = {"active": True}

    def install(modeling_utils: Any) -> None:
        if state["active"]:
            switches.install(modeling_utils.PreTrainedModel)

    if "transformers.modeling_utils" in sys.modules:
        install(sys.modules["transformers.modeling_utils"])
    else:
        wrapt.register_post_import_hook(install, "transformers.modeling_utils")

    def undo() -> None:
        state["active"] = False
        switches.uninstall()

    return undo

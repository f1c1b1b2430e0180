"""Applying gcshim without being asked in code: from settings, and on the first training forward.

- `apply_from_settings(model, settings)`: `gcshim.apply` with what the environment says. With a
  budget, the first step runs with every selected layer checkpointed (the safe choice) and the
  next training forward plans the budget on its own inputs, then applies that plan.
- `FirstForward`: a global forward pre-hook that applies gcshim to the first top-level module
  that runs forward in training mode with grad enabled and is not already checkpointed, once,
  then removes itself.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from . import api
from ._log import logger, notice_once
from .hf_flags import transformers_checkpoints
from .profile import loss_of
from .settings import Settings


def apply_from_settings(model: nn.Module, settings: Settings,
                        use_reentrant: Optional[bool] = None) -> api.Handle:
    options = settings.apply_options(use_reentrant)
    handle = api.apply(model, **options)
    if settings.budget is not None and handle.layers:
        _plan_on_next_forward(model, settings.budget, options)
    return handle


def _plan_on_next_forward(model: nn.Module, budget: int, options: Dict[str, Any]) -> None:
    """On the next training forward, re-apply `model` with the budget plan for its inputs."""

    def plan_then_run(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        hook.remove()

        def step() -> None:
            loss_of(module(*args, **kwargs)).backward()

        api.remove(module)
        try:
            handle = api.apply(module, budget=budget, example_inputs=step, **options)
        except Exception:
            api.apply(module, **options)  # keep checkpointing everything, say why once
            notice_once("budget-failed", "gcshim: planning GCSHIM_BUDGET failed; every selected "
                        "layer stays checkpointed", logging.WARNING)
            logger.exception("gcshim: the budget plan failed")
            return
        logger.info("gcshim: budget plan applied:\n%s", handle.plan)

    hook = model.register_forward_pre_hook(plan_then_run, with_kwargs=True)


class FirstForward:
    """Applies gcshim to the first top-level module that trains; then removes itself."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.applied_to: Optional[weakref.ref] = None
        self._seen: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # looked at, not chosen
        self._busy = threading.local()
        self._handle = nn.modules.module.register_module_forward_pre_hook(self._hook)

    @property
    def armed(self) -> bool:
        return self._handle is not None

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, args: Tuple[Any, ...]) -> None:
        if getattr(self._busy, "on", False) or module in self._seen:
            return
        if not (module.training and torch.is_grad_enabled()):
            return
        # Its submodules are never the top level: don't look at them on this or later calls.
        self._seen.update(module.modules())
        if api.is_applied(module) or any(transformers_checkpoints(m) for m in module.modules()):
            self.remove()  # the script checkpoints this model itself: nothing to do
            return
        if not any(p.requires_grad for p in module.parameters()):
            return
        self._busy.on = True
        try:
            apply_from_settings(module, self.settings)
        except LookupError as error:  # no blocks here; a later top-level module may have some
            logger.info("gcshim: auto: %s", error)
            return
        finally:
            self._busy.on = False
        self.applied_to = weakref.ref(module)
        logger.info("gcshim: auto: applied to %s on its first training forward",
                    type(module).__name__)
        self.remove()

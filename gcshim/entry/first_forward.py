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

from .. import api
from .._log import logger, notice_once, warn_once
from ..budget.measure import loss_of
from ..core import hooks
from .settings import Settings

# whether the GCSHIM_* settings have chosen what gcshim does to some model in this process
_settings_used = threading.Event()


def apply_from_settings(model: nn.Module, settings: Settings,
                        use_reentrant: Optional[bool] = None) -> api.Handle:
    """`gcshim.apply` with what the environment says; a setting matching nothing is a
    LookupError here (the callers decide whether that is a warning)."""
    options = settings.apply_options(use_reentrant)
    handle = api.apply(model, **options)
    _settings_used.set()
    if settings.offload and not torch.cuda.is_available():
        warn_once("offload-no-cuda", "gcshim: GCSHIM_OFFLOAD=1 does nothing without a CUDA "
                  "device; checkpointing runs as usual")
    if settings.budget is not None and handle.layers:
        _plan_on_next_forward(model, settings.budget, options)
    announce(handle, settings)
    return handle


def announce(handle: api.Handle, settings: Settings) -> None:
    """The one line (once per process, unless GCSHIM_QUIET) saying what gcshim did."""
    if settings.quiet or not handle.layers:
        return
    report = handle.report()
    rows = [row for row in report.rows if row.status == "checkpointed"]
    classes = ", ".join(sorted({row.layer for row in rows}))
    modes = " / ".join(sorted({row.mode for row in rows}))
    notice_once("announce", f"gcshim: checkpointing {len(rows)} layers of {report.model} "
                f"({classes}; {modes}), found by {report.source}. GCSHIM_QUIET=1 hides this "
                "line", logging.WARNING)


def warn_unused_settings(settings: Settings, why: str) -> None:
    """Once: the GCSHIM_* settings given were not used, and why."""
    given = settings.given()
    if given and not _settings_used.is_set():
        warn_once("settings-unused", f"gcshim: {', '.join(f'{k}={v}' for k, v in given.items())}"
                  f" did nothing: {why}")


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
        if api.is_applied(module) or any(framework.checkpoints(m) for m in module.modules()
                                         for framework in hooks.frameworks()):
            self.remove()  # the script checkpoints this model itself: nothing to do
            warn_unused_settings(self.settings, f"the script checkpoints {type(module).__name__}"
                                 " itself (gcshim.apply, or transformers' own checkpointing)")
            return
        if not any(p.requires_grad for p in module.parameters()):
            return
        self._busy.on = True
        try:
            apply_from_settings(module, self.settings)
        except LookupError as error:
            if self.settings.layers is not None:  # the user named layers: say they matched none
                warn_once(f"layers-unmatched:{type(module).__name__}",
                          f"{error}. Nothing is checkpointed (GCSHIM_LAYERS="
                          f"{self.settings.layers!r}; `gcshim inspect` shows what matches)")
            else:  # no blocks here; a later top-level module may have some
                logger.info("gcshim: auto: %s", error)
            return
        finally:
            self._busy.on = False
        self.applied_to = weakref.ref(module)
        logger.info("gcshim: auto: applied to %s on its first training forward",
                    type(module).__name__)
        self.remove()

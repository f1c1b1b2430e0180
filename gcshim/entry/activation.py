"""What `import gcshim.auto` turns on: gcshim for a training script, with settings from
GCSHIM_* variables.

On import (once per process; importing again does nothing):
- transformers' `gradient_checkpointing_enable()` / `activation_checkpointing_enable()` and the
  disable calls are routed through gcshim where transformers' own checkpointing is missing,
  raises or does nothing (see `gcshim.integrations.transformers`), whether transformers is
  imported before or after this module;
- the first top-level module that runs forward in training mode with grad enabled, and is not
  already checkpointed, gets `gcshim.apply` (see `gcshim.entry.first_forward.FirstForward`).

GCSHIM_DISABLE=1 makes the import a no-op. A bad GCSHIM_* value raises GcshimConfigError here,
at import. `deactivate()` undoes all of it (models already applied stay applied).
"""

from __future__ import annotations

import threading
from typing import Optional

from .._log import logger, warn_once
from ..core import hooks
from .first_forward import FirstForward, _settings_used, apply_from_settings
from .settings import VARIABLES, Settings, unknown_variables

_lock = threading.Lock()


class _Activation:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

        def apply(model, use_reentrant):  # type: ignore[no-untyped-def]
            return apply_from_settings(model, settings, use_reentrant)

        # each framework's own switches (transformers' gradient_checkpointing_enable) go
        # through gcshim where its own checkpointing falls short
        self._unroute = [framework.route_switches(apply, bool(settings.given()))
                         for framework in hooks.frameworks()]
        self.first_forward = FirstForward(settings)
        self.active = True

    def deactivate(self) -> None:
        self.active = False
        for unroute in self._unroute:
            unroute()
        self.first_forward.remove()


_activation: Optional[_Activation] = None


def activate(settings: Optional[Settings] = None) -> bool:
    """Turn gcshim.auto on (what importing this module does); False if GCSHIM_DISABLE is set or
    it is on already."""
    global _activation
    settings = settings or Settings.from_environ()
    settings.configure_logging()
    unknown = unknown_variables()
    if unknown:
        warn_once("unknown-variables", f"gcshim: {', '.join(unknown)} is not a gcshim setting "
                  f"and does nothing; the settings are {', '.join(VARIABLES)}")
    with _lock:
        if settings.disable or (_activation is not None and _activation.active):
            return False
        _activation = _Activation(settings)
        _settings_used.clear()  # what this activation's settings did, from now on
    logger.info("gcshim: auto is on")
    return True


def is_active() -> bool:
    """Whether gcshim.auto is on in this process."""
    return _activation is not None and _activation.active


def deactivate() -> None:
    """Undo `activate`: transformers' methods and the first-forward hook are restored."""
    global _activation
    with _lock:
        if _activation is not None:
            _activation.deactivate()
            _activation = None


def first_forward_target():
    """The module the first-forward hook applied gcshim to (None if none yet)."""
    ref = _activation.first_forward.applied_to if _activation is not None else None
    return ref() if ref is not None else None

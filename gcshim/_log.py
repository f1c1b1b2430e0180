"""The gcshim logger and once-per-process notices."""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from typing import Optional, Set

from .errors import GcshimWarning

logger = logging.getLogger("gcshim")

_seen: Set[str] = set()
_lock = threading.Lock()


def _first_time(key: str) -> bool:
    with _lock:
        if key in _seen:
            return False
        _seen.add(key)
        return True


_GCSHIM_DIR = os.path.dirname(os.path.abspath(__file__))
_TORCH_MODULES = os.path.join("torch", "nn", "modules")


def _outside_stacklevel() -> int:
    """The stacklevel (for a warnings.warn in warn_once) of the first frame outside gcshim and
    torch.nn's call machinery: the user's or the model's line that called the layer."""
    frame = sys._getframe(2)  # warn_once's caller
    level = 2
    while frame is not None and (frame.f_code.co_filename.startswith(_GCSHIM_DIR)
                                 or _TORCH_MODULES in frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    return level


def warn_once(key: str, message: str, stacklevel: Optional[int] = None) -> None:
    """Emit a GcshimWarning the first time `key` is seen in this process, attributed to
    `stacklevel`, or by default to the first frame outside gcshim and torch.nn."""
    if _first_time("warn:" + key):
        level = _outside_stacklevel() if stacklevel is None else stacklevel + 1
        warnings.warn(message, GcshimWarning, stacklevel=level)


def notice_once(key: str, message: str, level: int = logging.WARNING) -> None:
    """Log `message` on the gcshim logger the first time `key` is seen in this process."""
    if _first_time("log:" + key):
        logger.log(level, message)


def reset_notices() -> None:
    """Forget which notices were shown (for tests and long-lived interactive sessions)."""
    with _lock:
        _seen.clear()

"""The gcshim logger and once-per-process notices."""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Set

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


def warn_once(key: str, message: str, stacklevel: int = 2) -> None:
    """Emit a GcshimWarning the first time `key` is seen in this process."""
    if _first_time("warn:" + key):
        warnings.warn(message, GcshimWarning, stacklevel=stacklevel + 1)


def notice_once(key: str, message: str, level: int = logging.WARNING) -> None:
    """Log `message` on the gcshim logger the first time `key` is seen in this process."""
    if _first_time("log:" + key):
        logger.log(level, message)


def reset_notices() -> None:
    """Forget which notices were shown (for tests and long-lived interactive sessions)."""
    with _lock:
        _seen.clear()

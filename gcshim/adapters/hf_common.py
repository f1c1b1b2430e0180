"""What the transformers rows share."""

from __future__ import annotations

from typing import Any

from .row import Adapter


def transformers_row(**fields: Any) -> Adapter:
    """A row for layers defined in transformers, gated on the installed transformers."""
    return Adapter(**{"module_prefix": "transformers.", "package": "transformers", **fields})

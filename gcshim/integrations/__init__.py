"""Integrations: transformers (its answers to the core, registered here on import) and
Lightning. Neither imports its library until it is used."""

from . import transformers  # noqa: F401

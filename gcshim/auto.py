"""`import gcshim.auto`: gcshim for this training script (see gcshim.entry.activation)."""
from .entry.activation import activate, deactivate, first_forward_target, is_active  # noqa: F401

activate()

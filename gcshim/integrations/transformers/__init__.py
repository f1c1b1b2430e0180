"""Everything transformers-specific: its flags on layers, its enable/disable switches, its
declared layers, and the rule for taking its checkpointing over, behind `gcshim.core.hooks`."""

from . import answers  # noqa: F401  (registers transformers' answers with the core)

"""gcshim: gradient (activation) checkpointing for any PyTorch model at runtime, and out again."""

from . import integrations  # noqa: F401  (registers transformers' answers with the core)
from ._log import reset_notices
from ._version import __version__
from .adapters import Adapter, register_adapter, unregister_adapter
from .api import Handle, applied, apply, is_applied, plan, remove, report
from .budget.planner import Plan
from .core import sac
from .core.plain_copy import keep_on_copy
from .core.report import LayerReport, Report
from .core.side_effects import is_recomputing
from .core.torch_checkpoint import supported_options
from .errors import (
    BudgetError,
    GcshimConfigError,
    GcshimWarning,
    PatchedOverError,
    SideChannelError,
    UnsupportedOptionError,
)

__all__ = [
    "Adapter",
    "BudgetError",
    "GcshimConfigError",
    "GcshimWarning",
    "Handle",
    "LayerReport",
    "PatchedOverError",
    "Plan",
    "Report",
    "SideChannelError",
    "UnsupportedOptionError",
    "__version__",
    "applied",
    "apply",
    "is_applied",
    "is_recomputing",
    "keep_on_copy",
    "plan",
    "register_adapter",
    "remove",
    "report",
    "reset_notices",
    "sac",
    "supported_options",
    "unregister_adapter",
]

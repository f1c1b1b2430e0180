"""Every bad input gcshim has been tried with, and the error each gets.

One row per input: tests/test_bad_inputs.py checks each (the error type and message, and that
the model was left untouched); tools/errors_doc.py writes docs/errors.md from the same rows and
the messages they actually produce, and a test keeps that page current.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import torch
from torch import nn

import gcshim
from gcshim.core.torch_checkpoint import _OPTION_RULES, supported_options
from gcshim.entry.settings import Settings


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(3))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


X = torch.randn(2, 4)


def _x() -> torch.Tensor:
    return torch.randn(2, 4, requires_grad=True)


@dataclass(frozen=True)
class Case:
    group: str
    input: str  # as a user would write it
    run: Callable[[nn.Module], Any]  # gets a fresh Model
    error: type
    match: str  # a regular expression the message must contain
    needs: Optional[Callable[[], Optional[str]]] = None  # a reason to skip, where it can't run


def _missing_option() -> Optional[str]:
    """A checkpoint option the installed torch lacks, or None."""
    missing = [name for name in _OPTION_RULES if name not in supported_options()]
    return missing[-1] if missing else None


def _with_forward(value: Any) -> Callable[[nn.Module], Any]:
    def run(model: nn.Module) -> Any:
        model.blocks[1].forward = value
        return gcshim.apply(model)
    return run


def _env(**variables: str) -> Callable[[nn.Module], Any]:
    return lambda _model: Settings.from_environ(variables)


CASES: List[Case] = [
    # -- wrong types --------------------------------------------------------------------------
    Case("types", 'gcshim.apply("model")', lambda m: gcshim.apply("model"), TypeError,
         "expects a torch.nn.Module"),
    Case("types", "gcshim.apply(model, layers=42)", lambda m: gcshim.apply(m, layers=42),
         TypeError, "layers"),
    Case("types", "gcshim.apply(model, layers=int)", lambda m: gcshim.apply(m, layers=int),
         TypeError, "not an nn.Module subclass"),
    Case("types", "gcshim.apply(model, layers=[])", lambda m: gcshim.apply(m, layers=[]),
         ValueError, "empty"),
    Case("types", 'gcshim.apply(model, layers="")', lambda m: gcshim.apply(m, layers=""),
         ValueError, "empty string"),
    Case("types", 'gcshim.apply(model, use_reentrant="yes")',
         lambda m: gcshim.apply(m, use_reentrant="yes"), TypeError, "must be a bool"),
    Case("types", "gcshim.apply(model, preserve_rng_state=1)",
         lambda m: gcshim.apply(m, preserve_rng_state=1), TypeError, "must be a bool"),
    Case("types", 'gcshim.apply(model, offload="yes")',
         lambda m: gcshim.apply(m, offload="yes"), TypeError, "offload must be a bool"),
    Case("types", 'gcshim.apply(model, strict="yes")',
         lambda m: gcshim.apply(m, strict="yes"), TypeError, "strict must be a bool"),
    Case("types", "gcshim.apply(model, every=1.5)", lambda m: gcshim.apply(m, every=1.5),
         TypeError, "every"),
    Case("types", "gcshim.apply(model, every=0)", lambda m: gcshim.apply(m, every=0),
         ValueError, "every"),
    Case("types", "gcshim.apply(model, first=2, last=2)",
         lambda m: gcshim.apply(m, first=2, last=2), ValueError, "first.*last|last.*first"),
    Case("types", 'gcshim.remove("model")', lambda m: gcshim.remove("model"), TypeError,
         "expects a torch.nn.Module"),
    Case("types", 'gcshim.register_adapter("llama")',
         lambda m: gcshim.register_adapter("llama"), TypeError, "expects a gcshim.Adapter"),
    # -- layers that are not there ------------------------------------------------------------
    Case("layers", 'gcshim.apply(model, layers="NoSuchLayer*")',
         lambda m: gcshim.apply(m, layers="NoSuchLayer*"), LookupError, "Block"),
    Case("layers", "gcshim.apply(model, layers=lambda name, m: False)",
         lambda m: gcshim.apply(m, layers=lambda name, module: False), LookupError,
         "matched no layer"),
    Case("layers", "gcshim.apply(nn.Linear(4, 4))", lambda m: gcshim.apply(nn.Linear(4, 4)),
         LookupError, "matched no layer in Linear"),
    Case("layers", "gcshim.apply(nn.Sequential())", lambda m: gcshim.apply(nn.Sequential()),
         LookupError, "matched no layer in Sequential"),
    Case("layers", "model.blocks[1].forward = 42; gcshim.apply(model)", _with_forward(42),
         TypeError, "could not patch 'blocks.1': its forward is not callable"),
    Case("layers", "model.blocks[1].forward = None; gcshim.apply(model)", _with_forward(None),
         TypeError, "its forward is not callable"),
    # -- checkpoint options -------------------------------------------------------------------
    Case("options", "gcshim.apply(model, no_such_option=1)",
         lambda m: gcshim.apply(m, no_such_option=1), TypeError, "unknown checkpoint option"),
    Case("options", "gcshim.apply(model, <an option this torch lacks>=...)",
         lambda m: gcshim.apply(m, **{_missing_option(): True}), gcshim.UnsupportedOptionError,
         r"needs torch>=", needs=lambda: None if _missing_option() else "this torch has all"),
    Case("options", 'gcshim.apply(model, determinism_check="sometimes")',
         lambda m: gcshim.apply(m, determinism_check="sometimes"), TypeError,
         "'default' or 'none'",
         needs=lambda: None if "determinism_check" in supported_options() else "torch < 2.1"),
    Case("options", "gcshim.apply(model, use_reentrant=True, debug=True)",
         lambda m: gcshim.apply(m, use_reentrant=True, debug=True), ValueError,
         "only with use_reentrant=False",
         needs=lambda: None if "debug" in supported_options() else "torch < 2.1"),
    # -- budgets ------------------------------------------------------------------------------
    Case("budget", 'gcshim.apply(model, budget="12GiB")',
         lambda m: gcshim.apply(m, budget="12GiB"), ValueError, "needs example_inputs"),
    Case("budget", "gcshim.apply(model, example_inputs=(x,))",
         lambda m: gcshim.apply(m, example_inputs=(X,)), ValueError, "only used with budget"),
    Case("budget", 'gcshim.apply(model, budget="twelve", example_inputs=(x,))',
         lambda m: gcshim.apply(m, budget="twelve", example_inputs=(X,)), ValueError,
         "budget"),
    Case("budget", 'gcshim.apply(model, budget="12 parsecs", example_inputs=(x,))',
         lambda m: gcshim.apply(m, budget="12 parsecs", example_inputs=(X,)), ValueError,
         "budget"),
    Case("budget", 'gcshim.apply(model, budget="-1GiB", example_inputs=(x,))',
         lambda m: gcshim.apply(m, budget="-1GiB", example_inputs=(X,)), ValueError,
         "budget"),
    Case("budget", "gcshim.apply(model, budget=0, example_inputs=(x,))",
         lambda m: gcshim.apply(m, budget=0, example_inputs=(X,)), ValueError, "budget"),
    Case("budget", 'gcshim.apply(model, budget="1GiB", every=2, example_inputs=(x,))',
         lambda m: gcshim.apply(m, budget="1GiB", every=2, example_inputs=(X,)), ValueError,
         "budget"),
    Case("budget", "gcshim.plan(model.eval(), (x,), budget=10**9)",
         lambda m: gcshim.plan(m.eval(), (_x(),), budget=10**9), RuntimeError,
         "training mode"),
    Case("budget", "gcshim.plan(model, (x,), budget=1)",
         lambda m: gcshim.plan(m, (_x(),), budget=1), gcshim.BudgetError, "cannot be met"),
    # -- GCSHIM_* variables for gcshim.auto and `gcshim run` -------------------------------------
    Case("env", "GCSHIM_EVERY=abc", _env(GCSHIM_EVERY="abc"), gcshim.GcshimConfigError,
         "GCSHIM_EVERY"),
    Case("env", "GCSHIM_EVERY=0", _env(GCSHIM_EVERY="0"), gcshim.GcshimConfigError,
         "GCSHIM_EVERY"),
    Case("env", "GCSHIM_REENTRANT=maybe", _env(GCSHIM_REENTRANT="maybe"),
         gcshim.GcshimConfigError, "GCSHIM_REENTRANT"),
    Case("env", "GCSHIM_OFFLOAD=2", _env(GCSHIM_OFFLOAD="2"), gcshim.GcshimConfigError,
         "GCSHIM_OFFLOAD"),
    Case("env", "GCSHIM_BUDGET=lots", _env(GCSHIM_BUDGET="lots"), gcshim.GcshimConfigError,
         "GCSHIM_BUDGET"),
    Case("env", "GCSHIM_EVERY=2 GCSHIM_BUDGET=8GiB", _env(GCSHIM_EVERY="2",
                                                           GCSHIM_BUDGET="8GiB"),
         gcshim.GcshimConfigError, "one or the other"),
    Case("env", "GCSHIM_LOG=loud", _env(GCSHIM_LOG="loud"), gcshim.GcshimConfigError,
         "GCSHIM_LOG"),
    Case("env", "GCSHIM_LAYERS=,", _env(GCSHIM_LAYERS=","), gcshim.GcshimConfigError,
         "GCSHIM_LAYERS"),
    # -- state --------------------------------------------------------------------------------
    Case("state", "gcshim.plan(<an applied model>, (x,), budget=10**9)",
         lambda m: (gcshim.apply(m), gcshim.plan(m, (X,), budget=10**9)), RuntimeError,
         "already applied"),
]

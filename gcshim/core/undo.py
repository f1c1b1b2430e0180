"""One undo log: every change `apply` makes to a model, undone last-first.

Each change is recorded as it is made (a layer's forward replaced, a flag switched, a stack
marked), so `Handle.remove`, the rollback of an `apply` that fails or is interrupted half-way,
and `gcshim.remove(model)` all undo exactly what was done, by replaying the same log. The log
holds the modules it changed weakly: it never keeps a model alive (a module already freed has
nothing left to undo).
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, List, Optional, Tuple

from torch import nn

_Step = Tuple[Callable[..., Any], Tuple["weakref.ref[nn.Module]", ...],
              Optional[Callable[..., None]]]


class UndoLog:
    __slots__ = ("_steps",)

    def __init__(self) -> None:
        self._steps: List[_Step] = []

    def record(self, undo: Callable[..., Any], *modules: nn.Module,
               check: Optional[Callable[..., None]] = None) -> None:
        """`undo(*modules)` undoes a change just made; `check(*modules)` raises, touching
        nothing, where it must not run now. Neither may hold a module itself."""
        self._steps.append((undo, tuple(weakref.ref(m) for m in modules), check))

    def check(self) -> None:
        """Raise (before anything is undone) if a step cannot be undone now."""
        for _undo, refs, check in self._steps:
            modules = [ref() for ref in refs]
            if check is not None and all(m is not None for m in modules):
                check(*modules)

    def undo(self) -> None:
        """Undo every step, last first; the log is empty afterwards."""
        while self._steps:
            undo, refs, _check = self._steps.pop()
            modules = [ref() for ref in refs]
            if all(m is not None for m in modules):
                undo(*modules)

    def __len__(self) -> int:
        return len(self._steps)

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

_Step = Tuple[Callable[[nn.Module], Any], "weakref.ref[nn.Module]",
              Optional[Callable[[nn.Module], None]]]


class UndoLog:
    __slots__ = ("_steps",)

    def __init__(self) -> None:
        self._steps: List[_Step] = []

    def record(self, undo: Callable[[nn.Module], Any], module: nn.Module,
               check: Optional[Callable[[nn.Module], None]] = None) -> None:
        """`undo(module)` undoes a change just made to `module`; `check(module)` raises,
        touching nothing, where it must not run now. Neither may hold the module itself."""
        self._steps.append((undo, weakref.ref(module), check))

    def check(self) -> None:
        """Raise (before anything is undone) if a step cannot be undone now."""
        for _undo, ref, check in self._steps:
            module = ref()
            if check is not None and module is not None:
                check(module)

    def undo(self) -> None:
        """Undo every step, last first; the log is empty afterwards."""
        while self._steps:  # popped one by one: a step that raises leaves the rest to undo
            undo, ref, _check = self._steps.pop()
            module = ref()
            if module is not None:
                undo(module)

    def __len__(self) -> int:
        return len(self._steps)

"""Which of the selected layers to checkpoint: all, every n-th, the first or last k.

(A memory budget is the other way to choose; see ``gcshim.plan``.)
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, TypeVar

from torch import nn

from .selection import Selection

T = TypeVar("T")


def _positive_int(name: str, value: object) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def check_uniform(every: object, first: object, last: object, budget: object) -> None:
    """Reject option combinations that have no single meaning, before anything is touched."""
    _positive_int("every", every)
    _positive_int("first", first)
    _positive_int("last", last)
    if first is not None and last is not None:
        raise ValueError("give first= or last=, not both")
    if budget is not None and (every, first, last) != (None, None, None):
        raise ValueError("budget= chooses the layers itself; it cannot be combined with "
                         "every=, first= or last=")


def uniform(items: Sequence[T], every: Optional[int] = None, first: Optional[int] = None,
            last: Optional[int] = None) -> List[T]:
    """`items` (in forward order) narrowed to the first/last k, then every n-th of those
    (starting with the first)."""
    chosen = list(items)
    if first is not None:
        chosen = chosen[:first]
    if last is not None:
        chosen = chosen[max(len(chosen) - last, 0):]
    if every is not None:
        chosen = chosen[::every]
    return chosen


def describe(every: Optional[int], first: Optional[int], last: Optional[int]) -> str:
    parts = [f"{name}={value}" for name, value in
             (("first", first), ("last", last), ("every", every)) if value is not None]
    return ", ".join(parts)


def narrow(selection: Selection, keep: Sequence[str], why: str) -> Selection:
    """`selection` with only the paths in `keep` chosen; the others skipped with `why`."""
    keep_set = set(keep)
    chosen: List[Tuple[str, nn.Module]] = []
    skipped = list(selection.skipped)
    for path, module in selection.chosen:
        if path in keep_set:
            chosen.append((path, module))
        else:
            skipped.append((path, module, why))
    return Selection(chosen, skipped, selection.source, selection.switch_off)

"""Choosing the fewest layers to checkpoint so that a training step fits a memory budget.

The planner profiles one un-checkpointed step (per layer: the activation bytes autograd saves
inside it, and its forward time), estimates the peak of any choice of layers, takes the
cheapest recomputes first until the estimate fits, then measures that plan and adds layers
until the measured peak fits too.

Why the estimate has the shape it has: backward visits layers last to first, and when it
reaches layer l, every earlier layer that is not checkpointed still holds its activations while
l's own activations are alive (saved, or just recomputed). So the peak is about
``rest + max_l (sum of saved_j for j < l not checkpointed + saved_l)``. Checkpointing the last
layer never lowers it, so the last layer goes last.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

from torch import nn

from ..errors import BudgetError
from .measure import LayerCost, StepCost, device_of, layer_costs, measure_step
from .memory import format_bytes

# Applies gcshim to exactly these layer paths for the duration of a with-block.
SubsetApplier = Callable[[Sequence[str]], ContextManager[object]]


@dataclass(frozen=True)
class Measurement:
    """One measured step: how many layers were checkpointed, peak bytes, step time."""

    label: str
    checkpointed: int
    peak_bytes: int
    step_seconds: float


@dataclass
class Plan:
    """Which layers to checkpoint to fit `budget`, with the measurements behind the choice."""

    model: str
    device: str
    budget: int
    layers: List[LayerCost]
    checkpoint: List[str] = field(default_factory=list)
    measurements: List[Measurement] = field(default_factory=list)

    def _measured(self, label: str) -> Optional[Measurement]:
        return next((m for m in reversed(self.measurements) if m.label == label), None)

    @property
    def peak_bytes(self) -> Optional[int]:
        """The measured peak of the chosen plan (None when no plan fits: see BudgetError)."""
        chosen = self._measured("plan")
        return chosen.peak_bytes if chosen is not None else None

    @property
    def step_seconds(self) -> Optional[float]:
        chosen = self._measured("plan")
        return chosen.step_seconds if chosen is not None else None

    @property
    def fits(self) -> bool:
        peak = self.peak_bytes
        return peak is not None and peak <= self.budget

    def __str__(self) -> str:
        chosen = set(self.checkpoint)
        verdict = (f"checkpoint {len(self.checkpoint)} of {len(self.layers)} layers to fit"
                   if self.fits else f"no choice of its {len(self.layers)} layers fits")
        lines = [
            f"gcshim plan for {self.model} on {self.device}: {verdict} "
            f"{format_bytes(self.budget)}",
            "",
            "measured steps:",
        ]
        for m in self.measurements:
            lines.append(f"  {m.label:<14} {m.checkpointed:>4} layers  peak "
                         f"{format_bytes(m.peak_bytes):>12}  step {m.step_seconds * 1e3:9.2f} ms")
        lines += ["", "layers (forward order):"]
        width = max((len(c.path) for c in self.layers), default=10)
        for cost in self.layers:
            mark = "checkpoint" if cost.path in chosen else "keep"
            lines.append(f"  {cost.path:<{width}}  {mark:<10}  saves "
                         f"{format_bytes(cost.saved_bytes):>12}  forward "
                         f"{cost.forward_seconds * 1e3:8.3f} ms")
        return "\n".join(lines)

    def plot(self, path: str, title: Optional[str] = None) -> str:
        """Draw peak memory against step time for every measured step (needs matplotlib)."""
        from .frontier import draw_frontier

        points = [(m.label, m.step_seconds, m.peak_bytes) for m in self.measurements]
        return draw_frontier(points, path, title or f"gcshim plan: {self.model}",
                             budget=self.budget)


def estimate_peak(costs: Sequence[LayerCost], checkpointed: Sequence[bool], rest: int) -> int:
    """The estimated peak of a step with these layers checkpointed (see the module notes)."""
    kept_before = 0
    worst = 0
    for cost, is_checkpointed in zip(costs, checkpointed):
        worst = max(worst, kept_before + cost.saved_bytes)
        if not is_checkpointed:
            kept_before += cost.saved_bytes
    return rest + worst


def recompute_order(costs: Sequence[LayerCost]) -> List[int]:
    """Layer indices, cheapest recompute first; the last layer (no relief) at the end.

    Layers that save the same bytes (the repeated blocks of a model) are taken as equally
    costly, at their median forward time, so that timing noise never reorders them: ties go by
    position, and the same model and inputs give the same plan every time."""
    last = len(costs) - 1
    times: Dict[int, List[float]] = {}
    for cost in costs:
        times.setdefault(cost.saved_bytes, []).append(cost.forward_seconds)
    typical = {saved: statistics.median(seconds) for saved, seconds in times.items()}
    return sorted(range(len(costs)), key=lambda i: (
        i == last, typical[costs[i].saved_bytes], -costs[i].saved_bytes, i))


def _fewest_that_fit(costs: Sequence[LayerCost], order: Sequence[int], rest: int,
                     target: int, start: int) -> int:
    """The smallest count >= start such that checkpointing order[:count] is estimated to fit
    `target` (len(order) if none does)."""
    for count in range(start, len(order) + 1):
        chosen = set(order[:count])
        flags = [i in chosen for i in range(len(costs))]
        if estimate_peak(costs, flags, rest) <= target:
            return count
    return len(order)


def make_plan(model: nn.Module, layers: Sequence[Tuple[str, nn.Module]], step: Callable[[], None],
              budget: int, applied_to: SubsetApplier, repeats: int = 3) -> Plan:
    """Profile, choose, and verify by measuring; raises BudgetError if nothing fits."""
    costs = layer_costs(model, layers, step)
    plan = Plan(type(model).__name__, str(device_of(model)), budget, costs)

    def measure(label: str, paths: Sequence[str]) -> StepCost:
        with applied_to(paths):
            cost = measure_step(model, step, repeats)
        plan.measurements.append(Measurement(label, len(paths), cost.peak_bytes,
                                             cost.step_seconds))
        return cost

    paths = [c.path for c in costs]
    baseline = measure("none", [])
    if baseline.peak_bytes <= budget:
        plan.measurements.append(Measurement("plan", 0, baseline.peak_bytes,
                                             baseline.step_seconds))
        return plan
    full = measure("all", paths)
    if full.peak_bytes > budget:
        raise BudgetError(
            f"budget {format_bytes(budget)} cannot be met: a step needs "
            f"{format_bytes(full.peak_bytes)} with all {len(paths)} layers checkpointed "
            f"({format_bytes(baseline.peak_bytes)} with none); raise the budget, use offload, "
            "or shrink the batch",
            plan,
        )
    rest = baseline.peak_bytes - sum(c.saved_bytes for c in costs)
    order = recompute_order(costs)
    target = budget
    count = _fewest_that_fit(costs, order, rest, target, 1)
    while count < len(order):
        chosen = [paths[i] for i in sorted(order[:count])]
        measured = measure(f"try {count}", chosen)
        if measured.peak_bytes <= budget:
            plan.checkpoint = chosen
            plan.measurements[-1] = Measurement("plan", count, measured.peak_bytes,
                                                measured.step_seconds)
            return plan
        # The estimate was short by this much (recompute transients, allocator rounding).
        target -= measured.peak_bytes - budget
        count = _fewest_that_fit(costs, order, rest, target, count + 1)
    plan.checkpoint = paths
    plan.measurements.append(Measurement("plan", len(paths), full.peak_bytes, full.step_seconds))
    return plan

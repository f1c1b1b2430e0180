"""budget=: the measured peak of a step fits, with the fewest layers checkpointed."""

import copy

import pytest
import torch
from models import Mlp, assert_exact_and_recomputed, grads_of
from torch import nn

import gcshim
from gcshim.budget.measure import LayerCost
from gcshim.budget.memory import peak_bytes
from gcshim.budget.planner import estimate_peak, recompute_order


def _model(layers=8):
    torch.manual_seed(0)
    return nn.Sequential(*[Mlp() for _ in range(layers)])


X = torch.randn(512, 32)


def _measured_peak(model, x=X):
    for p in model.parameters():
        p.grad = None
    return peak_bytes(lambda: model(x).sum().backward(), torch.device("cpu"))


def test_budget_between_none_and_all_is_met_with_fewer_layers():
    model = _model()
    none = _measured_peak(model)
    with gcshim.applied(model):
        full = _measured_peak(model)
    budget = (none + full) // 2
    handle = gcshim.apply(model, budget=budget, example_inputs=(X,))
    assert 0 < len(handle.layers) < 8
    assert _measured_peak(model) <= budget
    assert handle.plan.fits and handle.plan.peak_bytes <= budget
    assert handle.plan.checkpoint == handle.layers
    assert "7" not in handle.layers  # the last layer gives no relief; it is taken last
    skipped = [row for row in handle.report().rows if "not needed to fit the budget" in row.status]
    assert len(skipped) == 8 - len(handle.layers)
    handle.remove()


def test_budget_plan_keeps_gradients_equal():
    model = _model()
    reference = copy.deepcopy(model)
    none = _measured_peak(reference)
    gcshim.apply(model, budget=int(none * 0.7), example_inputs=(X,))
    for p in [*model.parameters(), *reference.parameters()]:
        p.grad = None
    reference(X).pow(2).sum().backward()
    assert_exact_and_recomputed(model, lambda: model(X).pow(2).sum().backward(),
                                grads_of(reference))


def test_budget_above_the_uncheckpointed_peak_checkpoints_nothing():
    model = _model()
    handle = gcshim.apply(model, budget="1GiB", example_inputs=(X,))
    assert handle.layers == [] and handle.plan.checkpoint == []
    assert [m.label for m in handle.plan.measurements] == ["none", "plan"]


def test_budget_that_full_checkpointing_cannot_meet_says_so_with_numbers():
    model = _model()
    with pytest.raises(gcshim.BudgetError) as caught:
        gcshim.apply(model, budget="64KiB", example_inputs=(X,))
    message = str(caught.value)
    assert "64.00 KiB cannot be met" in message and "with all 8 layers checkpointed" in message
    assert "MiB with none" in message
    failed = caught.value.plan
    assert failed.measurements[-1].label == "all"
    assert not failed.fits and failed.peak_bytes is None
    assert "no choice of its 8 layers fits 64.00 KiB" in str(failed)
    assert not gcshim.is_applied(model)


def test_planning_leaves_grads_buffers_and_rng_as_they_were():
    class NormMlp(Mlp):
        def __init__(self):
            super().__init__()
            self.norm = nn.BatchNorm1d(32)

        def forward(self, x):
            return super().forward(self.norm(x))

    model = nn.Sequential(*[NormMlp() for _ in range(4)])
    model(X).sum().backward()  # gradients the user has accumulated
    grads = [p.grad.clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    state = torch.get_rng_state()
    plan = gcshim.plan(model, (X,), budget="1GiB")
    assert plan.checkpoint == []
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)
    for b, before in zip(model.buffers(), buffers):
        assert torch.equal(b, before)
    assert torch.equal(torch.get_rng_state(), state)
    assert not gcshim.is_applied(model)


def test_plan_takes_keyword_inputs_a_loss_attribute_and_a_callable():
    class WithLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(Mlp() for _ in range(4))

        def forward(self, x, target):
            for layer in self.layers:
                x = layer(x)
            out = type("Out", (), {})()
            out.loss = (x - target).pow(2).mean()
            return out

    model = WithLoss()
    target = torch.zeros(512, 32)
    by_keyword = gcshim.plan(model, {"x": X, "target": target}, budget="1GiB")
    assert [c.path for c in by_keyword.layers] == [f"layers.{i}" for i in range(4)]
    assert all(c.saved_bytes > 0 and c.forward_seconds > 0 for c in by_keyword.layers)
    calls = []

    def step():
        calls.append(1)
        model(X, target).loss.backward()

    by_callable = gcshim.plan(model, step, budget="1GiB")
    assert calls and by_callable.layers[0].saved_bytes == by_keyword.layers[0].saved_bytes


def test_plan_refuses_what_it_cannot_measure():
    model = _model(2)
    with pytest.raises(TypeError, match="example_inputs must be"):
        gcshim.plan(model, [X], budget="1GiB")
    with pytest.raises(ValueError, match="no floating-point tensor that requires grad"):
        gcshim.plan(_model(2).requires_grad_(False), (X,), budget="1GiB")
    model.eval()
    with pytest.raises(RuntimeError, match="training mode"):
        gcshim.plan(model, (X,), budget="1GiB")
    model.train()
    with gcshim.applied(model), pytest.raises(RuntimeError, match="already applied"):
        gcshim.plan(model, (X,), budget="1GiB")


def test_plan_prints_and_draws(tmp_path):
    model = _model(4)
    none = _measured_peak(model)
    plan = gcshim.plan(model, (X,), budget=int(none * 0.8))
    text = str(plan)
    assert f"checkpoint {len(plan.checkpoint)} of 4 layers" in text
    assert "none" in text and "all" in text and "plan" in text
    pytest.importorskip("matplotlib")
    picture = plan.plot(str(tmp_path / "frontier.png"))
    assert (tmp_path / "frontier.png").stat().st_size > 1000 and picture.endswith(".png")


def _costs(saved, seconds=None):
    seconds = seconds or [1.0] * len(saved)
    return [LayerCost(str(i), "L", s, t) for i, (s, t) in enumerate(zip(saved, seconds))]


def test_estimate_matches_the_backward_order_argument():
    costs = _costs([10, 10, 10, 10])
    assert estimate_peak(costs, [False] * 4, rest=5) == 45
    assert estimate_peak(costs, [True] * 4, rest=5) == 15  # one layer recomputed at a time
    assert estimate_peak(costs, [True, True, False, False], rest=5) == 25
    # checkpointing only the last layer gives no relief
    assert estimate_peak(costs, [False, False, False, True], rest=5) == 45


def test_recompute_order_is_cheapest_first_with_the_last_layer_last():
    costs = _costs([10, 11, 12, 13], seconds=[3.0, 1.0, 2.0, 0.5])
    assert recompute_order(costs) == [1, 2, 0, 3]


def test_recompute_order_of_repeated_blocks_ignores_timing_noise():
    # the same block seven times: measured times differ only by noise, the order by position
    noisy = _costs([10] * 7, seconds=[1.3, 0.9, 1.1, 1.0, 1.2, 0.95, 1.05])
    assert recompute_order(noisy) == [0, 1, 2, 3, 4, 5, 6]

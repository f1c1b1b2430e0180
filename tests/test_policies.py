"""every= / first= / last=, and the option checks that come before anything is patched."""

import pytest
import torch
from models import Block, assert_exact_and_recomputed, grads_of
from torch import nn

import gcshim
from gcshim.budget.memory import format_bytes, parse_bytes


def _stack(n=8):
    return nn.Sequential(*[Block() for _ in range(n)])


def _recomputed(model):
    """Indices of the blocks whose forward ran twice in one training step."""
    for block in model:
        block.calls = 0
    model(torch.randn(2, 8, requires_grad=True)).sum().backward()
    return [i for i, block in enumerate(model) if block.calls == 2]


@pytest.mark.parametrize("options, expected", [
    ({}, [0, 1, 2, 3, 4, 5, 6, 7]),
    ({"every": 2}, [0, 2, 4, 6]),
    ({"every": 3}, [0, 3, 6]),
    ({"first": 3}, [0, 1, 2]),
    ({"last": 2}, [6, 7]),
    ({"first": 20}, [0, 1, 2, 3, 4, 5, 6, 7]),
    ({"last": 5, "every": 2}, [3, 5, 7]),
    ({"first": 4, "every": 2}, [0, 2]),
])
def test_uniform_policies_checkpoint_exactly_those_layers(options, expected):
    model = _stack()
    handle = gcshim.apply(model, **options)
    assert handle.layers == [str(i) for i in expected]
    assert _recomputed(model) == expected
    report = handle.report()
    left_out = [row for row in report.rows if row.status.startswith("skipped: left out by")]
    assert len(left_out) == 8 - len(expected)
    handle.remove()
    assert _recomputed(model) == []


def test_every_keeps_gradients_equal():
    import copy

    model = _stack()
    reference = copy.deepcopy(model)
    x = torch.randn(4, 8)
    gcshim.apply(model, every=3)
    reference(x).pow(2).sum().backward()
    assert_exact_and_recomputed(model, lambda: model(x).pow(2).sum().backward(),
                                grads_of(reference))


@pytest.mark.parametrize("options, error, message", [
    ({"every": 0}, ValueError, "every must be at least 1"),
    ({"every": 1.5}, TypeError, "every must be a positive int"),
    ({"every": True}, TypeError, "every must be a positive int"),
    ({"first": -1}, ValueError, "first must be at least 1"),
    ({"last": "2"}, TypeError, "last must be a positive int"),
    ({"first": 2, "last": 2}, ValueError, "not both"),
    ({"every": 2, "budget": "1GiB", "example_inputs": (torch.ones(1),)}, ValueError,
     "cannot be combined"),
    ({"budget": "1GiB"}, ValueError, "needs example_inputs"),
    ({"example_inputs": (torch.ones(1),)}, ValueError, "only used with budget"),
    ({"budget": "12 parsecs", "example_inputs": (torch.ones(1),)}, ValueError,
     "is not a size"),
    ({"budget": -5, "example_inputs": (torch.ones(1),)}, ValueError, "positive size"),
    ({"offload": "yes"}, TypeError, "offload must be a bool"),
])
def test_bad_policy_options_fail_before_anything_is_patched(options, error, message):
    model = _stack()
    with pytest.raises(error, match=message):
        gcshim.apply(model, **options)
    assert not gcshim.is_applied(model)
    assert all("forward" not in block.__dict__ for block in model)


@pytest.mark.parametrize("text, expected", [
    ("12GiB", 12 * 2**30), ("1.5 GB", 1_500_000_000), ("800MiB", 800 * 2**20),
    ("4096", 4096), ("2kb", 2000), (" 3 TiB ", 3 * 2**40), (".5KiB", 512), (1024, 1024),
    (2.5e9, 2_500_000_000),
])
def test_budget_sizes_parse(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["", "GiB", "12 GiBs", "1e9", "12,5GB", "-1GB", "0", None,
                                 True, [1], float("nan"), float("inf")])
def test_bad_budget_sizes_are_rejected(bad):
    with pytest.raises((TypeError, ValueError), match="budget"):
        parse_bytes(bad)


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bytes(3 * 2**30) == "3.00 GiB"

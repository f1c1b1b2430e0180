"""Adapter rows: validation, version gating, lookup order, cache slots."""

import pytest
import torch
from models import WIDTH, warnings_as_errors
from torch import nn

import gcshim
from gcshim.adapters import GENERIC, find_adapter
from gcshim.core import caches
from gcshim.core.signature import Signature


class Blk(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)
        self.norm = nn.LayerNorm(WIDTH)

    def forward(self, h, output_attentions=False, my_cache=None, use_cache=False):
        out = (self.norm(self.lin(h)),)
        if output_attentions:
            out += ("attn",)
        if use_cache:
            out += ("present",)
        out += ("router",)
        return out


@pytest.fixture
def row():
    added = []

    def register(**fields):
        adapter = gcshim.register_adapter(gcshim.Adapter(name="test row", **fields))
        added.append(adapter)
        return adapter

    yield register
    for adapter in added:
        gcshim.unregister_adapter(adapter)


@pytest.mark.parametrize(
    "fields, error",
    [
        ({"name": ""}, TypeError),
        ({"name": "x", "classes": [3]}, TypeError),
        ({"name": "x", "classes": ("A",), "versions": ">=4.4", "package": None}, ValueError),
        ({"name": "x", "classes": ("A",), "package": "torch", "versions": "4.4+"}, ValueError),
        ({"name": "x", "classes": ("A",), "cache_slot": "middle"}, TypeError),
    ],
)
def test_bad_rows_are_refused(fields, error):
    with pytest.raises(error):
        gcshim.Adapter(**fields)


def test_register_checks_its_argument():
    with pytest.raises(TypeError):
        gcshim.register_adapter({"name": "dict row"})
    with pytest.raises(ValueError, match="names no layer classes"):
        gcshim.register_adapter(gcshim.Adapter(name="no classes"))


def test_a_single_class_name_string_is_accepted():
    assert gcshim.Adapter(name="x", classes="Blk").classes == ("Blk",)


def test_version_range_gates_the_row(row):
    installed = torch.__version__.split("+")[0]
    row(classes=("Blk",), package="torch", versions="<1.0")
    assert find_adapter(Blk()) is GENERIC
    match = row(classes=("Blk",), package="torch", versions=f"=={installed}")
    assert find_adapter(Blk()) is match


def test_module_prefix_limits_the_row_to_one_package(row):
    row(classes=("Blk",), module_prefix="transformers.")
    assert find_adapter(Blk()) is GENERIC


def test_subclasses_match_their_base_row(row):
    class Sub(Blk):
        pass

    match = row(classes=("Blk",))
    assert find_adapter(Sub()) is match


def test_user_rows_come_before_built_in_rows(row):
    layer = nn.TransformerEncoderLayer(8, 2, 16)
    assert find_adapter(layer).name.startswith("torch.nn.Transformer")
    mine = row(classes=("TransformerEncoderLayer",))
    assert find_adapter(layer) is mine


@pytest.mark.parametrize("output_attentions", [False, True])
def test_cache_slot_function_of_the_call(row, output_attentions):
    row(classes=("Blk",), cache_args=("my_cache",),
        cache_slot=lambda argument: 1 + bool(argument("output_attentions")))
    model = nn.Sequential(Blk(), Blk())
    gcshim.apply(model)
    h = torch.randn(2, WIDTH)
    empty = []  # an empty cache only collects for generation: neutralised, its slot kept
    with warnings_as_errors():
        out = model[0](h, output_attentions, empty, True)
    expected_tail = ("attn",) * output_attentions + (empty, "router")
    assert out[1:] == expected_tail
    out[0].sum().backward()


def test_signature_positions_and_defaults():
    sig = Signature.of(Blk().forward)
    assert dict(sig.positions) == {"h": 0, "output_attentions": 1, "my_cache": 2, "use_cache": 3}
    assert sig.defaults["use_cache"] is False
    assert Signature.of(print).positions == {}  # builtins: keywords only


def test_cache_slot_last_replaces_a_fixed_arity_output():
    from gcshim.core.caches import CacheEdit

    row = gcshim.Adapter(name="fixed", classes=("Fixed",), cache_slot="last")
    edit = CacheEdit(("use_cache=False",), True, "past_key_values", "CACHE", lambda name: None)
    assert caches.restore_output(row, ("h", "attn", None), edit) == ("h", "attn", "CACHE")

"""The `layers` spec and auto discovery."""

import re

import pytest
import torch
from models import RopeLikeModel, as_transformers_code
from torch import nn

import gcshim


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Inner()
        self.norm = nn.LayerNorm(4)

    def forward(self, x):
        return self.norm(x + self.inner(x))


class Net(nn.Module):
    def __init__(self, n=3):
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.blocks = nn.Sequential(*[Outer() for _ in range(n)])
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x))).sum()


def _layers(model, layers, **kw):
    handle = gcshim.apply(model, layers, **kw)
    try:
        return handle.layers
    finally:
        handle.remove()


def test_auto_finds_repeated_blocks_and_never_the_root():
    assert _layers(Net(), "auto") == ["blocks.0", "blocks.1", "blocks.2"]
    assert gcshim.apply(Net()).source == "auto: repeated blocks"


@pytest.mark.parametrize(
    "spec",
    [Outer, (Outer,), [Outer], "Outer", "Out*", "*ter", ["Nothing", Outer],
     lambda name, module: isinstance(module, Outer)],
    ids=["class", "tuple", "list", "name", "glob-prefix", "glob-suffix", "mixed", "callable"],
)
def test_spec_forms(spec):
    assert _layers(Net(), spec) == ["blocks.0", "blocks.1", "blocks.2"]


def test_outermost_match_wins():
    # "*er" matches Outer and Inner; Inner sits inside Outer, so only Outer is checkpointed.
    assert _layers(Net(), "*er") == ["blocks.0", "blocks.1", "blocks.2"]
    assert _layers(Net(), Inner) == ["blocks.0.inner", "blocks.1.inner", "blocks.2.inner"]


def test_glob_is_matched_on_the_class_name_case_sensitively():
    with pytest.raises(LookupError):
        gcshim.apply(Net(), "outer")


def test_callable_gets_the_module_path():
    seen = []
    _layers(Net(), lambda name, module: seen.append(name) or name == "blocks.1")
    assert "" not in seen and "blocks.1" in seen


def test_spec_matching_only_the_root_is_a_lookup_error():
    with pytest.raises(LookupError, match="never checkpointed"):
        gcshim.apply(Net(), Net)


def test_no_match_names_the_candidates():
    with pytest.raises(LookupError, match=r"layers='\*DecoderLayer' matched no layer in Net.*"
                                          r"Candidate block classes: Outer"):
        gcshim.apply(Net(), "*DecoderLayer")


def test_auto_on_a_model_without_blocks():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3))
    with pytest.raises(LookupError, match="auto discovery matched no layer in Sequential"):
        gcshim.apply(model)


@pytest.mark.parametrize("bad", [3, 2.5, None, {"a": 1}, b"Outer", [Outer, 7], object()])
def test_other_specs_are_type_errors(bad):
    with pytest.raises(TypeError, match="layers"):
        gcshim.apply(Net(), bad)


def test_a_non_module_class_is_a_type_error():
    with pytest.raises(TypeError, match="not an nn.Module subclass"):
        gcshim.apply(Net(), int)


@pytest.mark.parametrize("bad", ["", []])
def test_empty_specs_are_value_errors(bad):
    with pytest.raises(ValueError):
        gcshim.apply(Net(), bad)


@pytest.mark.parametrize("bad", [None, 3, "model", torch.randn(2)])
def test_non_module_model_is_a_type_error(bad):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        gcshim.apply(bad)
    with pytest.raises(TypeError):
        gcshim.remove(bad)
    with pytest.raises(TypeError):
        gcshim.report(bad)


def test_no_split_modules_are_used_before_repeated_blocks():
    class Stack(nn.Module):
        _no_split_modules = ["Inner"]

        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Outer() for _ in range(2))

    model = Stack()  # a Handle does not keep its model alive
    handle = gcshim.apply(model)
    assert handle.layers == ["blocks.0.inner", "blocks.1.inner"]
    assert handle.source == "auto: transformers _no_split_modules"


def test_adapter_table_comes_first():
    row = gcshim.Adapter(name="test Inner", classes=("Inner",))
    gcshim.register_adapter(row)
    try:
        model = Net()
        model._no_split_modules = ["Outer"]
        handle = gcshim.apply(model)
        assert handle.layers == ["blocks.0.inner", "blocks.1.inner", "blocks.2.inner"]
        assert handle.source == "auto: adapter table"
        assert {r.adapter for r in handle.report().rows} == {"test Inner"}
    finally:
        gcshim.unregister_adapter(row)


def test_torch_transformer_layers_found_by_the_table():
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    handle = gcshim.apply(model)
    assert handle.layers == ["layers.0", "layers.1"]
    assert handle.source == "auto: adapter table"
    x = torch.randn(2, 5, 8)
    mask = nn.Transformer.generate_square_subsequent_mask(5)
    model(x, mask=mask, is_causal=True).sum().backward()


def test_report_lists_layers_adapters_and_modes():
    model = as_transformers_code(RopeLikeModel())
    model.layers[2].gradient_checkpointing = True
    gcshim.apply(model, layers="RopeLikeBlock", use_reentrant=True)
    text = str(gcshim.report(model))
    assert "2 of 3 layers of RopeLikeModel checkpointed" in text
    assert re.search(r"^layers\.0 +RopeLikeBlock +checkpointed +generic +reentrant$", text, re.M)
    assert "generic" in text and "reentrant" in text
    assert "skipped: transformers' own gradient checkpointing is on" in text
    gcshim.remove(model)
    assert str(gcshim.report(model)) == "gcshim: nothing applied to RopeLikeModel"

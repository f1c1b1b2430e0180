"""The built-in adapter table as data: well-formed, one file per family, no version gaps."""

import pytest
from models import needs_transformers
from packaging.version import Version
from torch import nn

from gcshim.adapters import GENERIC, Adapter, registry, versions
from gcshim.core.caches import returns_cache

RELEASES = ["4.44.2", "4.52.4", "4.55.4", "4.57.6", "5.0.0", "5.24.0"]


def _fake_layer(name, module):
    cls = type(name, (nn.Module,), {})
    cls.__module__ = module
    return cls


def test_rows_have_unique_names_and_known_choices():
    rows = registry._BUILTIN
    names = [row.name for row in rows]
    assert len(names) == len(set(names))
    for row in rows:
        assert row.classes or row.predicate, row.name
        assert row.grad_args or row.cache_policy != "neutralise", row.name


@pytest.mark.parametrize("version", RELEASES)
def test_every_version_gated_class_has_a_row_on_every_release(version, monkeypatch):
    monkeypatch.setattr(versions, "installed_version", lambda package: Version(version))
    gated = {(name, row.module_prefix) for row in registry._BUILTIN if row.versions
             for name in row.classes}
    for name, prefix in sorted(gated):
        layer = _fake_layer(name, (prefix or "") + "models.fake")()
        row = registry.find_adapter(layer)
        assert not row.is_generic, (name, version)


@pytest.mark.parametrize("version, slot", [("4.44.2", 1), ("5.0.0", "auto")])
def test_t5_rows_follow_the_release(version, slot, monkeypatch):
    monkeypatch.setattr(versions, "installed_version", lambda package: Version(version))
    layer = _fake_layer("T5Block", "transformers.models.t5.modeling_t5")()
    assert registry.find_adapter(layer).cache_slot == slot


def test_transformers_5_layers_never_get_a_cache_slot_back(monkeypatch):
    layer_type = _fake_layer("GPT2Block", "transformers.models.gpt2.modeling_gpt2")
    monkeypatch.setattr(versions, "installed_version", lambda package: Version("5.0.0"))
    assert not returns_cache(layer_type)
    monkeypatch.setattr(versions, "installed_version", lambda package: Version("4.44.2"))
    assert returns_cache(layer_type)
    assert returns_cache(_fake_layer("Block", "mymodels"))


@needs_transformers
def test_within_rows_need_the_ancestor():
    row = next(r for r in registry._BUILTIN if r.within)
    layer = _fake_layer("AnyLayer", "anything")()
    assert registry.find_adapter(layer) is GENERIC
    assert registry.find_adapter(layer, ancestors=row.within) is row
    assert not registry.has_specific_adapter(layer)  # never used for auto discovery


@pytest.mark.parametrize("field, value", [
    ("cache_policy", "sometimes"), ("transformers_checkpointing", "maybe"),
])
def test_bad_choices_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        Adapter(name="bad", classes=("X",), **{field: value})


def test_predicate_must_be_callable():
    with pytest.raises(TypeError, match="predicate"):
        Adapter(name="bad", predicate="Block")

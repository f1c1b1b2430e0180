"""Behaviour 8: an error half-way through apply leaves the model exactly as it was."""

import pytest
from models import RopeLikeModel
from test_restore import _snapshot

import gcshim


def test_layers_callable_that_raises():
    model = RopeLikeModel()
    before = _snapshot(model)

    def pick(name, module):
        if name == "layers.1":
            raise RuntimeError("no opinion on this one")
        return name.startswith("layers.")

    with pytest.raises(RuntimeError, match=r"'layers.1' \(RopeLikeBlock\): no opinion") as info:
        gcshim.apply(model, layers=pick)
    assert info.value.__traceback__ is not None
    assert _snapshot(model) == before
    assert not gcshim.is_applied(model)


def test_failure_while_patching_undoes_earlier_patches():
    model = RopeLikeModel()
    model.layers[2].forward = 42  # a layer whose forward is not a function
    before = _snapshot(model)
    with pytest.raises(TypeError, match=r"could not patch 'layers.2': its forward is not callable"):
        gcshim.apply(model, layers="RopeLikeBlock")
    assert _snapshot(model) == before
    assert not gcshim.is_applied(model)


def test_keyboard_interrupt_during_patching(monkeypatch):
    from gcshim.core import patching as patch_module

    model = RopeLikeModel()
    before = _snapshot(model)
    real = patch_module.patch
    count = []

    def interrupted(*args, **kwargs):
        count.append(1)
        if len(count) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(patch_module, "patch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        gcshim.apply(model)
    assert _snapshot(model) == before


def test_bad_options_fail_before_anything_is_touched():
    model = RopeLikeModel()
    before = _snapshot(model)
    with pytest.raises(TypeError):
        gcshim.apply(model, use_reentrant="yes")
    assert _snapshot(model) == before

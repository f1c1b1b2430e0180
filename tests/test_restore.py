"""Behaviour 6: exact restoration, and nothing outside the model is ever affected."""

import torch
from models import RopeLikeModel, assert_same_grads, grads_of
from torch import nn

import gcshim


def _snapshot(model):
    """Every class and instance __dict__ under model: keys and value identities."""
    classes = {cls for module in model.modules() for cls in type(module).__mro__}
    return (
        {cls: {k: id(v) for k, v in vars(cls).items()} for cls in classes},
        {path: {k: id(v) for k, v in vars(m).items()} for path, m in model.named_modules()},
    )


def test_dicts_identical_after_remove():
    model = RopeLikeModel()
    before = _snapshot(model)
    handle = gcshim.apply(model, use_reentrant=True)
    classes_during, instances_during = _snapshot(model)
    assert classes_during == before[0]  # classes are never touched
    assert "forward" in instances_during["layers.0"]
    handle.remove()
    assert _snapshot(model) == before
    assert all("forward" not in vars(layer) for layer in model.layers)


def test_own_forward_attribute_is_put_back():
    model = RopeLikeModel()
    layer = model.layers[1]
    own = layer.forward  # an instance attribute set by some other tool
    layer.forward = own
    before = _snapshot(model)
    gcshim.apply(model)
    assert vars(layer)["forward"] is not own
    gcshim.remove(model)
    assert vars(layer)["forward"] is own
    assert _snapshot(model) == before


def test_model_trains_exactly_as_before_after_remove():
    torch.manual_seed(1)
    model = RopeLikeModel()
    ids = torch.randint(32, (3, 5))
    model(ids).backward()
    reference = grads_of(model)
    model.zero_grad(set_to_none=True)
    gcshim.apply(model).remove()
    for layer in model.layers:
        layer.first_calls = 0
    model(ids).backward()
    assert_same_grads(reference, model, atol=0)
    assert [layer.first_calls for layer in model.layers] == [1, 1, 1]  # no recompute


def test_other_instances_of_the_same_class_are_unaffected(checkpoint_calls):
    calls = checkpoint_calls
    model, other = RopeLikeModel(), RopeLikeModel()
    gcshim.apply(model)
    assert type(model.layers[0]).forward is type(other.layers[0]).forward
    other(torch.randint(32, (2, 4))).backward()
    assert calls == []
    assert all("forward" not in vars(layer) for layer in other.layers)


def test_remove_by_model_handle_or_context_manager():
    model = RopeLikeModel()
    before = _snapshot(model)
    with gcshim.applied(model, layers="RopeLikeBlock") as handle:
        assert len(handle.layers) == 3
        assert gcshim.is_applied(model)
    assert _snapshot(model) == before
    gcshim.apply(model)
    gcshim.remove(model)
    assert _snapshot(model) == before


def test_applied_block_keeps_an_earlier_apply():
    model = RopeLikeModel()
    outer = gcshim.apply(model)
    with gcshim.applied(model):
        pass
    assert outer.layers == ["layers.0", "layers.1", "layers.2"]


def test_applied_restores_when_the_body_raises():
    model = RopeLikeModel()
    before = _snapshot(model)
    try:
        with gcshim.applied(model):
            raise KeyError("boom")
    except KeyError:
        pass
    assert _snapshot(model) == before


def test_remove_leaves_a_patch_someone_put_over_gcshim():
    model = RopeLikeModel()
    gcshim.apply(model)
    layer = model.layers[0]
    theirs = layer.forward.__wrapped__
    layer.forward = theirs  # another tool replaced gcshim's forward
    gcshim.remove(model)
    assert vars(layer)["forward"] is theirs
    assert all("forward" not in vars(m) for m in model.layers[1:])


def test_handle_does_not_keep_the_model_alive():
    import gc
    import weakref

    model = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(2)])
    handle = gcshim.apply(model)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
    assert handle.model is None

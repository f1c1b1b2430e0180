"""Behaviour 3: a cache that holds something is the layer's input, kept and updated once; an
empty one is neutralised while checkpointing, output arity kept; a legacy tuple cache of a layer
outside transformers is left as the layer uses it."""

import warnings

import pytest
import torch
from models import (
    WIDTH,
    CacheCallerModel,
    LayerPastBlock,
    PastKeyValueBlock,
    assert_exact_and_recomputed,
    grads_of,
    warnings_as_errors,
)

import gcshim
from gcshim import GcshimWarning


@pytest.fixture(autouse=True)
def _layer_past_row():
    """LayerPastBlock stands for transformers' GPT-2 layer of 4.44, which has a table row (a
    layer outside transformers with no row keeps a legacy tuple cache instead)."""
    row = gcshim.register_adapter(gcshim.Adapter(name="test GPT-2-like",
                                                 classes=("LayerPastBlock",)))
    yield
    gcshim.unregister_adapter(row)


def _run(model, **kwargs):
    loss, caches = model(torch.randn(3, WIDTH), **kwargs)
    loss.backward()
    return caches


@pytest.mark.parametrize("filled", [False, True], ids=["empty", "filled"])
@pytest.mark.parametrize("positional", [False, True], ids=["keyword", "positional"])
@pytest.mark.parametrize("output_attentions", [False, True])
def test_past_key_value_layer(positional, output_attentions, reentrant, filled):
    model = CacheCallerModel(PastKeyValueBlock, positional=positional, filled=filled).train()
    gcshim.apply(model, use_reentrant=reentrant)
    with warnings_as_errors():
        caches = _run(model, output_attentions=output_attentions)
    for layer, cache in zip(model.layers, caches):
        assert layer.seen
        if filled:
            # the layer's input: kept, caching on, appended to once (the recompute's append
            # is undone), and the caller indexed the cache slot the layer itself returns
            assert len(cache) == 2
            assert all(pkv is not None and use is True for pkv, use in layer.seen)
        else:
            # only collects for generation: neutralised in every call checkpointing made,
            # and the caller got back the (untouched) cache it passed in
            assert len(cache) == 0
            assert all(pkv is None and use is False for pkv, use in layer.seen)


@pytest.mark.parametrize("filled", [False, True], ids=["empty", "filled"])
@pytest.mark.parametrize("positional", [False, True], ids=["keyword", "positional"])
def test_layer_past_layer_keeps_slot_one(positional, reentrant, filled):
    """A GPT-2-style layer (4.44) with a table row: the present at index 1, from the layer
    itself where its past holds something (kept), else the past passed in (caching off)."""
    model = CacheCallerModel(LayerPastBlock, positional=positional, filled=filled).train()
    gcshim.apply(model, use_reentrant=reentrant)
    with warnings_as_errors():
        caches = _run(model, output_attentions=True)
    assert [cache is None for cache in caches] == [not filled] * 2
    if filled:
        assert all(len(present) == 2 and present[0].shape == (3, WIDTH) for present in caches)


@pytest.mark.parametrize("positional", [False, True], ids=["keyword", "positional"])
def test_a_copied_layer_keeps_its_legacy_cache_and_layout(positional, reentrant):
    """The same layer as user code (a copy of an old modeling file) with no table row: a cache
    of tuples cannot change in place, so it stays on, exact, in the layer's own layout."""
    gcshim.unregister_adapter(next(row for row in gcshim.adapters.adapter_rows()
                                   if row.name == "test GPT-2-like"))
    model = CacheCallerModel(LayerPastBlock, positional=positional).train()
    reference = CacheCallerModel(LayerPastBlock, positional=positional).train()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(3, WIDTH)
    loss, want = reference(x, output_attentions=True)
    loss.backward()
    gcshim.apply(model, use_reentrant=reentrant)
    out = []

    def step():
        loss, caches = model(x, output_attentions=True)
        loss.backward()
        out.append(caches)

    with warnings_as_errors():
        assert_exact_and_recomputed(model, step, grads_of(reference))
    caches = out[0]
    assert [len(cache) for cache in caches] == [2, 2]  # the presents, at index 1
    for got, expected in zip(caches, want):
        torch.testing.assert_close(got[0], expected[0])
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_without_gcshim_the_caller_gets_real_caches():
    model = CacheCallerModel(PastKeyValueBlock).train()
    caches = _run(model)
    assert all(len(cache) == 1 for cache in caches)


def test_one_warning_per_layer_class_not_per_step():
    rows = [gcshim.register_adapter(gcshim.Adapter(name=f"test run-as-is {name}",
                                                   classes=(name,), cache_policy="run-as-is"))
            for name in ("PastKeyValueBlock", "LayerPastBlock")]
    try:
        model = CacheCallerModel(PastKeyValueBlock, layers=3, filled=True).train()
        other = CacheCallerModel(LayerPastBlock, layers=2, filled=True).train()
        gcshim.apply(model)
        gcshim.apply(other)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(4):
                _run(model)
                _run(other)
    finally:
        for row in rows:
            gcshim.unregister_adapter(row)
    messages = [str(w.message) for w in caught if w.category is GcshimWarning]
    assert len(messages) == 2
    assert "PastKeyValueBlock" in messages[0] and "LayerPastBlock" in messages[1]
    # attributed to the model's line that called the layer, not to gcshim or torch.nn
    assert {w.filename for w in caught if w.category is GcshimWarning} == {
        CacheCallerModel.forward.__code__.co_filename}


def test_no_warning_when_no_cache_is_asked_for():
    model = CacheCallerModel(PastKeyValueBlock).train()
    gcshim.apply(model)
    with warnings_as_errors():
        h = torch.randn(3, WIDTH)
        for layer in model.layers:
            h = layer(h, use_cache=False)[0]
        h.sum().backward()


def test_caches_untouched_when_not_checkpointing():
    model = CacheCallerModel(PastKeyValueBlock).train()
    gcshim.apply(model)
    with warnings_as_errors():
        with torch.no_grad():
            _, caches = model(torch.randn(3, WIDTH))
        model.eval()
        _, eval_caches = model(torch.randn(3, WIDTH))
    assert all(len(cache) == 1 for cache in caches + eval_caches)


def test_default_use_cache_true_is_neutralised():
    """A layer whose use_cache defaults to True (BartDecoderLayer in 4.44) gets False passed."""

    class DefaultTrue(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(WIDTH, WIDTH)
            self.flags = []

        def forward(self, h, use_cache=True):
            self.flags.append(use_cache)
            out = (self.lin(h),)
            return out + (("cache",),) if use_cache else out

    model = torch.nn.Sequential(DefaultTrue(), DefaultTrue())
    row = gcshim.register_adapter(gcshim.Adapter(name="test Bart-like", classes=("DefaultTrue",)))
    try:
        gcshim.apply(model)
    finally:
        gcshim.unregister_adapter(row)
    h = torch.randn(2, WIDTH)
    with warnings_as_errors():  # no cache was passed: nothing lost, nothing to say
        for layer in model:
            out = layer(h)
            assert len(out) == 2 and out[1] is None
            h = out[0]
    h.sum().backward()
    assert all(flag is False for layer in model for flag in layer.flags)


class _GrowingCache:
    """A cache object like transformers' DynamicCache: empty until a layer updates it."""

    def __init__(self):
        self.keys = []

    def get_seq_length(self):
        return len(self.keys)

    def to_legacy_cache(self):
        return tuple(self.keys)


class NoFlagCacheBlock(torch.nn.Module):
    """GIT's layer on transformers 4.4x-4.5x: no use_cache switch; it updates the cache it is
    passed and returns it last, every call, for its stack to read at index -1."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(WIDTH, WIDTH)

    def forward(self, hidden_states, attention_mask=None, past_key_value=None):
        out = torch.tanh(self.lin(hidden_states)) + hidden_states
        if past_key_value is not None:
            past_key_value.keys.append(out)
        return out, past_key_value


def test_a_layer_without_a_use_cache_switch_hands_its_stack_the_cache_it_was_passed(
        reentrant):
    model = torch.nn.ModuleList([NoFlagCacheBlock(), NoFlagCacheBlock()])
    x = torch.randn(3, WIDTH, requires_grad=True)

    def step():
        h, cache = x, _GrowingCache()
        for layer in model:
            outputs = layer(h, None, cache)
            h, cache = outputs[0], outputs[-1]
        h.pow(2).sum().backward()
        return cache.to_legacy_cache()  # what the stack does with it: it must be there

    step()
    reference = grads_of(model)
    model.zero_grad(set_to_none=True)
    gcshim.apply(torch.nn.Sequential(*model), layers=NoFlagCacheBlock, use_reentrant=reentrant)
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        assert_exact_and_recomputed(model, step, reference)
    assert step() == ()  # the caller's cache, neutralised: nothing collected while training

"""A cache that holds something is the layer's input (gcshim.core.caches, side_channels): kept,
what the call changes in it put back for the recompute, carried through reentrant checkpoints;
state a layer keeps on its own modules or its stack writes into after the call, replayed; what
gcshim cannot put back exactly, an error that names it. Our own small models; the real ones
(PEFT prefix tuning, Mamba, RecurrentGemma, xLSTM) are in test_prefix_tuning / test_stateful."""

from __future__ import annotations

import copy
import gc
import pickle
import weakref

import pytest
import torch
from models import assert_exact_and_recomputed, grads_of, warnings_as_errors
from torch import nn

import gcshim
from gcshim.errors import SideChannelError

DIM, LAYERS, PREFIX = 8, 3, 4


class PrefixCache:
    """A DynamicCache stand-in: one keys tensor per layer, update() appends."""

    def __init__(self, keys):
        self.keys = list(keys)

    def get_seq_length(self, index=0):
        return self.keys[index].shape[1]

    def update(self, key, index):
        self.keys[index] = torch.cat([self.keys[index], key], dim=1)
        return self.keys[index]


class AttendToCache(nn.Module):
    def __init__(self, index):
        super().__init__()
        self.proj = nn.Linear(DIM, DIM)
        self.index = index

    def forward(self, hidden_states, past_key_values=None, use_cache=False):
        key = self.proj(hidden_states)
        keys = past_key_values.update(key, self.index) if past_key_values is not None else key
        weights = torch.softmax(hidden_states @ keys.transpose(1, 2), dim=-1)
        return hidden_states + weights @ keys


class PrefixTuned(nn.Module):
    """A learned prefix handed to every layer through the cache, as PEFT prefix tuning does;
    the loss reads the cache the layers leave too."""

    def __init__(self, learned=True):
        super().__init__()
        torch.manual_seed(0)
        self.prefix = nn.Parameter(torch.randn(LAYERS, 1, PREFIX, DIM), requires_grad=learned)
        self.layers = nn.ModuleList(AttendToCache(i) for i in range(LAYERS))

    def forward(self, x):
        cache = PrefixCache(p.expand(x.shape[0], -1, -1) for p in self.prefix)
        for layer in self.layers:
            x = layer(x, past_key_values=cache, use_cache=True)
        return x.pow(2).sum() + sum(keys.sin().sum() for keys in cache.keys)


def _step(model, x):
    model.zero_grad(set_to_none=True)
    loss = model(x)
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("learned", [True, False], ids=["learned-prefix", "frozen-prefix"])
def test_a_filled_cache_is_kept_exact_in_both_modes(reentrant, learned):
    model = PrefixTuned(learned)
    x = torch.randn(2, 5, DIM, requires_grad=True)
    reference = copy.deepcopy(model)
    want = _step(reference, x)
    gcshim.apply(model, layers=AttendToCache, use_reentrant=reentrant)
    for _ in range(2):  # the first call is checked non-reentrant; the second is the mode's own
        with warnings_as_errors():
            assert_exact_and_recomputed(model, lambda: _step(model, x), grads_of(reference))
        assert _step(model, x) == want
    assert (model.prefix.grad is not None) == learned
    rows = gcshim.report(model).rows
    assert all(row.status == "checkpointed" and "keeps in the cache" in row.note
               for row in rows)
    assert {row.mode for row in rows} == {"reentrant" if reentrant else "non-reentrant"}


def test_an_empty_cache_is_neutralised():
    """Empty: it only collects for generation, so the call runs without it (nothing lost)."""
    seen = []

    class Layer(AttendToCache):
        def forward(self, hidden_states, past_key_values=None, use_cache=False):
            seen.append((past_key_values, use_cache))
            return super().forward(hidden_states, past_key_values, use_cache)

    layer = Layer(0)
    gcshim.apply(nn.Sequential(layer), layers=Layer)
    empty = PrefixCache([torch.zeros(2, 0, DIM)])
    layer(torch.randn(2, 5, DIM, requires_grad=True), past_key_values=empty,
          use_cache=True).sum().backward()
    assert seen and all(cache is None and use is False for cache, use in seen)
    assert empty.get_seq_length() == 0


class Deep:
    def __init__(self, depth):
        self.inner = Deep(depth - 1) if depth else torch.ones(1)

    def get_seq_length(self):
        return 1


def test_a_cache_too_deep_to_put_back_is_an_error_naming_its_type():
    layer = AttendToCache(0)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = layer

        def forward(self, hidden_states, cache=None):
            return self.inner(hidden_states)

    model = nn.Sequential(Layer())
    gcshim.apply(model, layers=Layer)
    with pytest.raises(SideChannelError, match=r"cache: .*Deep\b.*too large or deep"):
        model[0](torch.randn(2, 3, DIM, requires_grad=True), cache=Deep(12))


class WindowLayer(nn.Module):
    """Keeps a window of its keys as a plain tensor attribute, read, then written in place and
    read again in each call (RecurrentGemma's attention with use_cache on, before 5.0)."""

    def __init__(self, size=DIM):
        super().__init__()
        self.proj = nn.Linear(DIM, DIM)
        self.window = torch.zeros(2, 3, size)

    def forward(self, hidden_states):
        key = self.proj(hidden_states)
        # what the window held when the call began (tanh keeps its output for backward)
        mixed = torch.tanh(hidden_states + self.window[:, :, :DIM].mean(1, keepdim=True))
        self.window[:, :, :DIM] = key[:, -3:]  # in place, with grad
        return mixed + self.window[:, :, :DIM].mean(1, keepdim=True)


def test_a_tensor_the_layer_writes_in_place_on_itself_is_put_back(reentrant):
    model = nn.Sequential(*[WindowLayer() for _ in range(3)])
    x = torch.randn(2, 5, DIM, requires_grad=True)

    def step(m):
        for layer in m:
            layer.window = torch.ones(2, 3, DIM)  # its stack resets it every step
        m.zero_grad(set_to_none=True)
        m(x).pow(2).sum().backward()

    reference = copy.deepcopy(model)
    step(reference)
    gcshim.apply(model, layers=WindowLayer, use_reentrant=reentrant)
    for _ in range(2):
        with warnings_as_errors():
            assert_exact_and_recomputed(model, lambda: step(model), grads_of(reference))


def test_a_large_tensor_written_in_place_on_the_layer_is_an_error():
    model = nn.Sequential(WindowLayer(size=1 << 18))  # 6 MiB: not copied at every call
    gcshim.apply(model, layers=WindowLayer)
    with pytest.raises(SideChannelError, match=r"WindowLayer writes in place into 'window'"):
        model(torch.randn(2, 5, DIM, requires_grad=True))
    # the window keeps the failed call's graph; the layer, dropped, is still freed at once
    dropped = weakref.ref(model[0])
    gc.disable()
    try:
        del model
        assert dropped() is None, "the failed call's graph keeps the layer alive"
    finally:
        gc.enable()


class StateBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x, state=None):
        new = torch.tanh(self.proj(x).mean(1) + state)
        return x + new[:, None], new


class StateStack(nn.Module):
    """Writes each block's new state into the state tensors it passed, after the call (xLSTM's
    stack with use_cache on)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(StateBlock() for _ in range(3))

    def forward(self, x):
        states = [torch.zeros(x.shape[0], DIM) for _ in self.blocks]
        for block, state in zip(self.blocks, states):
            x, new = block(x, state)
            state.copy_(new)
        return x.pow(2).sum() + sum(state.sum() for state in states)


def test_state_the_stack_writes_after_the_call_with_a_copied_args_row(reentrant):
    row = gcshim.register_adapter(gcshim.Adapter(name="test state block",
                                                 classes=("StateBlock",), grad_args=("x",),
                                                 copied_args=("state",)))
    try:
        model = StateStack()
        x = torch.randn(2, 5, DIM, requires_grad=True)
        reference = copy.deepcopy(model)
        _step(reference, x)
        gcshim.apply(model, layers=StateBlock, use_reentrant=reentrant)
        for _ in range(2):
            with warnings_as_errors():
                assert_exact_and_recomputed(model, lambda: _step(model, x), grads_of(reference))
    finally:
        gcshim.unregister_adapter(row)


def test_transformers_flag_reads_false_only_to_code_passing_a_filled_cache():
    from gcshim.integrations.transformers.flags import ON

    filled = PrefixCache([torch.ones(1, 2, DIM)])
    empty = PrefixCache([torch.zeros(1, 0, DIM)])

    def drops_cache(past_key_values=None, **kwargs):
        return bool(ON)  # where transformers decides to drop a flagged layer's cache

    assert drops_cache() and drops_cache(past_key_values=empty)
    assert not drops_cache(past_key_values=filled)
    assert not drops_cache(kwargs_only=1, cache=filled)  # in the caller's **kwargs
    assert bool(ON) and pickle.loads(pickle.dumps(ON)) is True


class KeyValueCache(PrefixCache):
    """Keys and values per layer, both appended to (two outputs of each layer's call)."""

    def __init__(self, keys):
        super().__init__(keys)
        self.values = [key * 2 for key in self.keys]

    def update(self, key, index):
        self.values[index] = torch.cat([self.values[index], key * 2], dim=1)
        return super().update(key, index)


def test_a_kept_cache_leaves_nothing_alive_after_the_step(reentrant):
    """The cache holds the checkpoint's outputs, whose autograd node holds the call that holds
    the cache: once backward has run, the model and its layers are freed."""

    model = PrefixTuned()
    gcshim.apply(model, layers=AttendToCache, use_reentrant=reentrant)
    x = torch.randn(2, 5, DIM)
    for _ in range(3):
        cache = KeyValueCache(p.expand(2, -1, -1) for p in model.prefix)
        h = x
        for layer in model.layers:
            h = layer(h, past_key_values=cache, use_cache=True)
        h.sum().backward()  # the loss reads no cache entry
    assert {row.mode for row in gcshim.report(model).rows} == {
        "reentrant" if reentrant else "non-reentrant"}
    layer = weakref.ref(model.layers[0])
    del model, cache, h
    gc.collect()
    assert layer() is None

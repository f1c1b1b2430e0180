"""The known traps of checkpointing real models, each rebuilt as a small model of its own.

Each test compares gradients with the un-checkpointed run and checks the layers recomputed.
"""

import copy
from typing import Optional

import pytest
import torch
from models import (
    CHECK_RUNS,
    as_transformers_code,
    assert_exact_and_recomputed,
    assert_same_grads,
    grads_of,
    needs_transformers,
    table_without,
    warnings_as_errors,
)
from torch import nn

import gcshim
from gcshim.adapters import Adapter


def _train_step(model, *args, **kwargs):
    model.zero_grad(set_to_none=True)
    out = model(*args, **kwargs)
    loss = out if isinstance(out, torch.Tensor) else out[0]
    loss.backward()
    return grads_of(model)


def _count_inner_calls(model, layer_type):
    """Counts calls of each `layer_type` layer's first child (it runs again on recompute)."""
    counts = []
    for module in model.modules():
        if isinstance(module, layer_type):
            child = next(module.children())
            counts.append(0)
            index = len(counts) - 1

            def hook(_m, _a, index=index):
                counts[index] += 1

            child.register_forward_pre_hook(hook)
    return counts


# -- a cache the layer updates in place (sub-config use_cache=True in VLMs) -----------------
class GrowingCache:
    """A DynamicCache stand-in: update() appends and returns everything seen so far."""

    def __init__(self):
        self.keys = {}

    def get_seq_length(self, index=0):
        return self.keys[index].shape[1] if index in self.keys else 0

    def update(self, key, index):
        old = self.keys.get(index)
        self.keys[index] = key if old is None else torch.cat([old, key], dim=1)
        return self.keys[index]


class CacheUpdatingLayer(nn.Module):
    def __init__(self, dim, index):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.index = index

    def forward(self, hidden_states, cache: Optional[GrowingCache] = None, use_cache=False):
        key = self.proj(hidden_states)
        keys = cache.update(key, self.index) if cache is not None else key
        # attention-like mixing over every cached position: its shape follows the cache
        weights = torch.softmax(hidden_states @ keys.transpose(1, 2), dim=-1)
        return hidden_states + weights @ keys


class SubConfigCacheModel(nn.Module):
    """The top level says use_cache=False, the text sub-config says True (as in Qwen2-VL)."""

    def __init__(self, dim=8, layers=3):
        super().__init__()
        self.text_use_cache = True
        self.layers = nn.ModuleList(CacheUpdatingLayer(dim, i) for i in range(layers))

    def forward(self, x):
        cache = GrowingCache() if self.text_use_cache else None
        for layer in self.layers:
            x = layer(x, cache=cache, use_cache=self.text_use_cache)
        return x.pow(2).sum()


def test_cache_kept_on_by_a_sub_config_is_not_updated_twice(reentrant):
    model = SubConfigCacheModel()
    x = torch.randn(2, 5, 8, requires_grad=True)
    reference = _train_step(copy.deepcopy(model), x)
    counts = _count_inner_calls(model, CacheUpdatingLayer)
    gcshim.apply(model, layers=CacheUpdatingLayer, use_reentrant=reentrant)
    with warnings_as_errors():  # an empty cache: neutralised, nothing lost
        _train_step(model, x)
    assert_same_grads(reference, model)
    assert counts == [2 + CHECK_RUNS[reentrant]] * 3


# -- a caller that mutates its list argument after the layer ran (RT-DETR HybridEncoder) ------
class FeatureFuse(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, feature_maps, index):
        return torch.tanh(self.proj(feature_maps[index])) * feature_maps[index - 1]


class MutatingCaller(nn.Module):
    def __init__(self, dim=6, levels=3):
        super().__init__()
        self.fuse = nn.ModuleList(FeatureFuse(dim) for _ in range(levels))

    def forward(self, x):
        feature_maps = [x * (i + 1) for i in range(len(self.fuse) + 1)]
        for i, block in enumerate(self.fuse, start=1):
            feature_maps[i] = block(feature_maps, i)  # the list the block saw changes here
        return feature_maps[-1].pow(2).sum()


def test_list_argument_mutated_after_the_layer_ran(reentrant):
    model = MutatingCaller()
    x = torch.randn(4, 6, requires_grad=True)
    reference = _train_step(copy.deepcopy(model), x)
    counts = _count_inner_calls(model, FeatureFuse)
    gcshim.apply(model, layers=FeatureFuse, use_reentrant=reentrant)
    _train_step(model, x)
    assert_same_grads(reference, model)
    assert counts == [2 + CHECK_RUNS[reentrant]] * 3


# -- grad-carrying tensors inside a dict keyword (Gemma-3n / Gemma-4 shared KV states) --------
class SharedKVLayer(nn.Module):
    def __init__(self, dim, produces):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.produces = produces

    def forward(self, hidden_states, shared_kv_states=None):
        out = self.proj(hidden_states)
        if self.produces:
            return out, {"kv": out * 2}
        return out + shared_kv_states["kv"], shared_kv_states


class SharedKVModel(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.layers = nn.ModuleList(SharedKVLayer(dim, i == 0) for i in range(3))

    def forward(self, x):
        shared = None
        for layer in self.layers:
            x, shared = layer(x, shared_kv_states=shared)
        return x.sum()


def test_grad_carrying_tensors_inside_a_dict_keyword(reentrant):
    model = SharedKVModel()
    x = torch.randn(3, 8)  # frozen input: only the dict carries the producer's gradient
    reference = _train_step(copy.deepcopy(model), x)
    gcshim.apply(model, layers=SharedKVLayer, use_reentrant=reentrant)
    assert_exact_and_recomputed(model, lambda: _train_step(model, x), reference)
    assert model.layers[0].proj.weight.grad.abs().sum() > 0


# -- a position bias handed from layer to layer by keyword (WavLM, SEW-D, SpeechT5) ----------
class BiasLayer(nn.Module):
    def __init__(self, dim, first):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.bias = nn.Parameter(torch.randn(dim)) if first else None

    def forward(self, hidden_states, position_bias=None):
        if position_bias is None:
            position_bias = self.bias * 1.5
        return self.proj(hidden_states) + position_bias, position_bias


class BiasChainModel(nn.Module):
    def __init__(self, dim=8, layers=4):
        super().__init__()
        self.layers = nn.ModuleList(BiasLayer(dim, i == 0) for i in range(layers))

    def forward(self, x):
        bias = None
        for layer in self.layers:
            x, bias = layer(x, position_bias=bias)
        return x.pow(2).sum()


def test_position_bias_passed_by_keyword_between_layers(reentrant):
    model = BiasChainModel()
    x = torch.randn(3, 8, requires_grad=True)
    reference = _train_step(copy.deepcopy(model), x)
    counts = _count_inner_calls(model, BiasLayer)
    gcshim.apply(model, layers=BiasLayer, use_reentrant=reentrant)
    _train_step(model, x)
    assert_same_grads(reference, model)
    # recomputed once each: no nesting, no second backward
    assert counts == [2 + CHECK_RUNS[reentrant]] * 4


# -- a model that reads the cache its layers fill, inside the training forward (PI0) ----------
class PI0Model(nn.Module):
    """Named as the transformers class the table's `within` row names."""

    def __init__(self, dim=8):
        super().__init__()
        self.prefix = nn.ModuleList(CacheUpdatingLayer(dim, i) for i in range(2))
        self.expert = nn.ModuleList(CacheUpdatingLayer(dim, i) for i in range(2))

    def forward(self, prefix, suffix):
        cache = GrowingCache()
        for layer in self.prefix:
            prefix = layer(prefix, cache=cache, use_cache=True)
        for layer in self.expert:  # reads the prefix keys, then adds its own
            suffix = layer(suffix, cache=cache)
        return suffix.pow(2).sum() + prefix.sum()


class PI0Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = PI0Model()

    def forward(self, prefix, suffix):
        return self.model(prefix, suffix)


@needs_transformers
def test_a_cache_the_model_needs_in_training_is_left_alone(reentrant):
    model = PI0Wrapper()
    prefix, suffix = torch.randn(2, 4, 8), torch.randn(2, 3, 8, requires_grad=True)
    reference = _train_step(copy.deepcopy(model), prefix, suffix)
    gcshim.apply(model, layers=CacheUpdatingLayer, use_reentrant=reentrant)
    rows = {row.adapter for row in gcshim.report(model).rows}
    assert rows == {"transformers PI0 (prefix cache)"}
    with pytest.warns(gcshim.GcshimWarning, match="fills a cache its model reads"):
        _train_step(model, prefix, suffix)
    assert_same_grads(reference, model)


def test_blind_neutralisation_would_change_the_result():
    """Why the PI0 row exists: with the cache taken away the expert sees no prefix."""
    model = PI0Wrapper()
    prefix, suffix = torch.randn(2, 4, 8), torch.randn(2, 3, 8)
    expected = model(prefix, suffix)
    with table_without(lambda row: row.within == ("PI0Model",)):
        gcshim.apply(model, layers=CacheUpdatingLayer)
        assert not torch.allclose(model(prefix, suffix), expected)


# -- layers the model flags but never checkpoints; broken transformers branches --------------
class FlaggedStack(nn.Module):
    """A transformers-style stack whose gradient_checkpointing flag is on."""

    def __init__(self, layer_type, dim=8, layers=3):
        super().__init__()
        self.layers = nn.ModuleList(layer_type(dim) for _ in range(layers))
        self.gradient_checkpointing = True
        self._gradient_checkpointing_func = torch.utils.checkpoint.checkpoint

    def forward(self, x):
        for layer in self.layers:  # the flag is never read: nothing is checkpointed
            x = layer(x)
        return x.sum()


def _fake_transformers_layer(name):
    def forward(self, hidden_states):
        return torch.tanh(self.proj(hidden_states))

    def init(self, dim):
        nn.Module.__init__(self)
        self.proj = nn.Linear(dim, dim)

    cls = type(name, (nn.Module,), {"__init__": init, "forward": forward})
    cls.__module__ = "transformers.models.fake.modeling_fake"
    return cls


def test_layers_transformers_flags_but_never_checkpoints_are_taken():
    layer_type = _fake_transformers_layer("MllamaVisionEncoderLayer")  # a "no-op" row
    model = FlaggedStack(layer_type)
    x = torch.randn(2, 8, requires_grad=True)
    reference = _train_step(copy.deepcopy(model), x)
    counts = _count_inner_calls(model, layer_type)
    handle = gcshim.apply(model, layers=layer_type)
    assert len(handle.layers) == 3
    _train_step(model, x)
    assert_same_grads(reference, model)
    assert counts == [2, 2, 2]


def test_layers_under_a_working_transformers_flag_are_left_to_it():
    layer_type = _fake_transformers_layer("LlamaDecoderLayer")  # transformers checkpoints these
    model = as_transformers_code(FlaggedStack(layer_type))
    handle = gcshim.apply(model, layers=layer_type)
    assert handle.layers == []
    assert all("transformers' own" in row.status for row in handle.report().rows)


def test_a_broken_transformers_branch_is_switched_off_and_back():
    gcshim.register_adapter(row := Adapter(
        name="test broken", classes=("BrokenLayer",), module_prefix="transformers.",
        transformers_checkpointing="broken"))
    try:
        model = FlaggedStack(_fake_transformers_layer("BrokenLayer"))
        handle = gcshim.apply(model, layers="BrokenLayer")
        assert len(handle.layers) == 3
        assert model.gradient_checkpointing is False
        handle.remove()
        assert model.gradient_checkpointing is True
    finally:
        gcshim.unregister_adapter(row)


# -- discovery traps ----------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return x + self.fc(self.norm(x))


class NamesNothing(nn.Module):
    """_no_split_modules names a class that does not exist (DepthPro, TimmWrapper)."""

    _no_split_modules = ["DepthProViTLayerThatIsNotThere"]

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(Block(), Block(), Block())

    def forward(self, x):
        return self.blocks(x).sum()


def test_no_split_modules_naming_nothing_falls_back_to_repeated_blocks():
    model = NamesNothing()
    handle = gcshim.apply(model)
    assert handle.layers == ["blocks.0", "blocks.1", "blocks.2"]
    assert handle.source == "auto: repeated blocks"


def test_blocks_whose_inputs_need_no_grad_still_train(reentrant):
    """PVTv2: the first block gets a frozen input; its parameters still get gradients."""
    model = NamesNothing()
    x = torch.randn(4, 8)
    reference = _train_step(copy.deepcopy(model), x)
    gcshim.apply(model, use_reentrant=reentrant)
    assert_exact_and_recomputed(model, lambda: _train_step(model, x), reference)
    assert model.blocks[0].fc.weight.grad is not None


class Stages(nn.Module):
    """Stages held as a ModuleList of ModuleLists (PVT, GLPN): the lists are never called."""

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList(nn.ModuleList(Block() for _ in range(2)) for _ in range(2))

    def forward(self, x):
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return x.sum()


def test_nested_module_lists_are_not_taken_for_blocks(checkpoint_calls):
    model = Stages()
    handle = gcshim.apply(model)
    assert handle.layers == ["stages.0.0", "stages.0.1", "stages.1.0", "stages.1.1"]
    model(torch.randn(2, 8)).backward()
    assert len(checkpoint_calls) == 4


# -- a layer that keeps a recurrent state on itself (RecurrentGemma's RG-LRU) ----------------
class StatefulLayer(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.recurrent_states = None

    def forward(self, hidden_states):
        if self.recurrent_states is not None:  # the state carried over from the last call
            hidden_states = hidden_states + self.recurrent_states
        out = torch.tanh(self.proj(hidden_states))
        self.recurrent_states = out.detach()
        return out


class StatefulModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(StatefulLayer() for _ in range(3))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x.pow(2).sum()


def test_module_state_is_replayed_for_the_recompute(reentrant):
    row = Adapter(name="test stateful", classes=("StatefulLayer",),
                  module_state=("recurrent_states",))
    gcshim.register_adapter(row)
    try:
        model = StatefulModel()
        x = torch.randn(4, 8, requires_grad=True)
        reference = _train_step(copy.deepcopy(model), x)
        gcshim.apply(model, use_reentrant=reentrant)
        _train_step(model, x)
        assert_same_grads(reference, model)
        # the state after the step is the forward's, not the recompute's
        assert all(layer.recurrent_states is not None for layer in model.layers)
    finally:
        gcshim.unregister_adapter(row)


def test_without_the_row_the_state_is_found_and_replayed(reentrant):
    """The first checkpointed call sees the layer reassign its own attribute, and the
    recompute starts from the value the forward saw (side_channels), with no table row."""
    model = StatefulModel()
    x = torch.randn(4, 8, requires_grad=True)
    reference = _train_step(copy.deepcopy(model), x)
    handle = gcshim.apply(model, use_reentrant=reentrant)
    _train_step(model, x)
    assert_same_grads(reference, model)
    assert all("recurrent_states" in row.note for row in handle.report().rows)


def test_without_any_replay_the_recompute_sees_the_updated_state(monkeypatch):
    from gcshim.core import side_channels

    monkeypatch.setattr(side_channels.Probe, "replay", lambda self: None)
    model = StatefulModel()
    x = torch.randn(4, 8, requires_grad=True)
    reference = _train_step(copy.deepcopy(model), x)
    gcshim.apply(model)
    grads = _train_step(model, x)
    assert not torch.allclose(grads["layers.0.proj.weight"], reference["layers.0.proj.weight"])

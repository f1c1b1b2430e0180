"""An applied model, dropped, is freed by reference counting alone (no cyclic garbage
collector): a layer holds gcshim's wrapper, and nothing of gcshim's holds the layer strongly."""

import gc
import weakref

import pytest
import torch
from models import stack

import gcshim


def _plain():
    return stack(3), lambda m: m(torch.randn(2, 8)).sum()


def _llama():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1,
                                      vocab_size=32)
    ids = torch.randint(32, (2, 5))
    return transformers.LlamaForCausalLM(config).train(), lambda m: m(ids, labels=ids).loss


@pytest.mark.parametrize("remove", [False, True], ids=["dropped", "removed"])
@pytest.mark.parametrize("build", [_plain, _llama], ids=["torch", "transformers"])
def test_a_dropped_model_is_freed_without_the_cycle_collector(build, reentrant, remove):
    # torch's first checkpoint call imports lazily, and an import keeps that call's frames
    # (and the model in them) for a while: warm up on another model first
    warm, warm_loss = build()
    with gcshim.applied(warm, use_reentrant=reentrant):
        warm_loss(warm).backward()
    del warm
    gc.collect()
    gc.disable()
    try:
        model, loss_of = build()
        handle = gcshim.apply(model, use_reentrant=reentrant)
        loss_of(model).backward()
        assert handle.layers  # applied and trained
        if remove:
            handle.remove()
        layers = [weakref.ref(m) for m in model.modules()]
        del model
        assert [ref for ref in layers if ref() is not None] == []
        assert handle.layers == []  # the handle kept nothing alive
    finally:
        gc.enable()

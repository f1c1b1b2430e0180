"""Real transformers models built from tiny configs (nothing is downloaded)."""

import copy
import warnings

import pytest
import torch
from models import CHECK_RUNS, assert_exact_and_recomputed, grads_of

import gcshim

transformers = pytest.importorskip("transformers")


def _llama():
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=64, max_position_embeddings=64,
        attention_dropout=0.0, use_cache=True,
    )
    return transformers.LlamaForCausalLM(config)


def _gpt2():
    config = transformers.GPT2Config(
        n_embd=32, n_layer=3, n_head=4, vocab_size=64, n_positions=64,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=True,
    )
    return transformers.GPT2LMHeadModel(config)


BUILDERS = {"llama": (_llama, "LlamaDecoderLayer"), "gpt2": (_gpt2, "GPT2Block")}


def _layers_of(model):
    base = getattr(model, "model", None) or model.transformer
    return list(getattr(base, "layers", None) or base.h)


def _first_linear(layer):
    """The layer's first leaf module with weights (a norm or a projection): it runs first."""
    return next(m for m in layer.modules()
                if next(m.children(), None) is None and list(m.parameters(recurse=False)))


def _enable_transformers_checkpointing(model):
    # 5.24 renamed the API; the old name warns there.
    enable = getattr(model, "activation_checkpointing_enable", None)
    (enable or model.gradient_checkpointing_enable)()


def _step(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), grads


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_gradients_equal_and_layers_recompute(arch, reentrant):
    build, layer_class = BUILDERS[arch]
    model = build().train()
    ids = torch.randint(64, (2, 12))
    loss_ref, grads_ref = _step(model, ids)

    calls = []
    for layer in _layers_of(model):
        _first_linear(layer).register_forward_hook(lambda *_, c=calls: c.append(1))
    handle = gcshim.apply(model, use_reentrant=reentrant)
    assert [type(m).__name__ for _, m in model.named_modules()
            if _ in handle.layers] == [layer_class] * 3
    assert handle.source == "auto: adapter table"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gcshim.GcshimWarning)  # use_cache=True in the config
        loss, grads = _step(model, ids)
    # each layer's first linear ran in forward and again in backward (and reentrant's check)
    assert len(calls) == 3 * (2 + CHECK_RUNS[reentrant])
    torch.testing.assert_close(loss, loss_ref, rtol=0, atol=1e-5)
    assert grads.keys() == grads_ref.keys()
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)


def test_use_cache_in_config_trains_without_a_warning():
    # config.use_cache makes an empty cache in a training step: nothing lost, nothing said
    model = _llama().train()
    assert model.config.use_cache
    gcshim.apply(model)
    ids = torch.randint(64, (2, 8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            model(input_ids=ids, labels=ids).loss.backward()
    assert not [w for w in caught if issubclass(w.category, gcshim.GcshimWarning)]


def test_transformers_own_checkpointing_is_not_nested():
    """gcshim stands by on layers transformers checkpoints (for calls passing a cache that
    holds something, which transformers would drop): the others stay transformers' alone."""
    model = _llama().train()
    _enable_transformers_checkpointing(model)
    handle = gcshim.apply(model)
    assert handle.layers == [f"model.layers.{i}" for i in range(len(_layers_of(model)))]
    statuses = {r.status for r in handle.report().rows}
    assert statuses == {"handed to transformers' own gradient checkpointing"}
    calls = []
    for layer in _layers_of(model):
        _first_linear(layer).register_forward_hook(lambda *_, c=calls: c.append(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _step(model, torch.randint(64, (2, 8)))
    assert len(calls) == 2 * len(_layers_of(model))  # forward and one recompute, not two
    handle.remove()
    assert all(layer.gradient_checkpointing is True for layer in _layers_of(model))


def test_other_models_of_the_class_keep_transformers_checkpointing():
    ours, theirs = _llama().train(), _llama().train()
    theirs_ref = copy.deepcopy(theirs)
    gcshim.apply(ours)
    _enable_transformers_checkpointing(theirs)
    cls = type(_layers_of(theirs)[0])
    forward_before = cls.__dict__["forward"]
    calls = []
    for layer in _layers_of(theirs):
        _first_linear(layer).register_forward_hook(lambda *_, c=calls: c.append(1))
    ids = torch.randint(64, (2, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, grads = _step(theirs, ids)
        _, grads_ref = _step(theirs_ref, ids)
    assert len(calls) == 6  # transformers itself still recomputes every layer of `theirs`
    assert cls.__dict__["forward"] is forward_before
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-5)


def test_frozen_base_with_reentrant_needs_no_input_require_grads():
    model = _llama().train()
    model.requires_grad_(False)
    trainable = [layer.mlp.down_proj.weight for layer in _layers_of(model)]
    for weight in trainable:
        weight.requires_grad_(True)
    ids = torch.randint(64, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    reference = [w.grad.clone() for w in trainable]
    reference_by_name = grads_of(model)  # only the trainable weights have one
    for weight in trainable:
        weight.grad = None
    gcshim.apply(model, use_reentrant=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", gcshim.GcshimWarning)
        assert_exact_and_recomputed(
            model, lambda: model(input_ids=ids, labels=ids).loss.backward(), reference_by_name,
            rtol=1e-5, atol=1e-6)
    for weight, grad in zip(trainable, reference):
        torch.testing.assert_close(weight.grad, grad, rtol=1e-5, atol=1e-6)


def test_state_dict_and_save_pretrained_names_unchanged(tmp_path):
    model = _gpt2()
    keys = list(model.state_dict())
    try:
        model.save_pretrained(tmp_path / "plain")
    except ImportError as error:  # transformers asking this torch for what it lacks
        pytest.skip(f"transformers {transformers.__version__} cannot save_pretrained on torch "
                    f"{torch.__version__}, gcshim or not: {error}")
    gcshim.apply(model)
    assert list(model.state_dict()) == keys
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert list(loaded.state_dict()) == keys

"""transformers' own flags stay consistent with what gcshim does (Trainer, PEFT, TRL read them)."""

import pickle
import warnings

import pytest
import torch
from packaging.version import Version

import gcshim
from gcshim.integrations.transformers import flags as hf_flags

transformers = pytest.importorskip("transformers")


def _llama():
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=64, max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config)


def _is_checkpointing(model):
    with warnings.catch_warnings():  # 5.24 deprecates the old name with a FutureWarning
        warnings.simplefilter("ignore", FutureWarning)
        return model.is_gradient_checkpointing


def _enable_transformers(model):
    enable = getattr(model, "activation_checkpointing_enable", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        (enable or model.gradient_checkpointing_enable)()


def _instance_state(model):
    return {path: dict(vars(module)) for path, module in model.named_modules()}


def test_apply_sets_and_remove_restores_is_gradient_checkpointing():
    model = _llama()
    before = _instance_state(model)
    assert not _is_checkpointing(model)
    gcshim.apply(model)
    assert _is_checkpointing(model)
    # the Trainer's DDP rule: find_unused_parameters = not model.is_gradient_checkpointing
    assert (not _is_checkpointing(model)) is False
    gcshim.remove(model)
    assert not _is_checkpointing(model)
    assert _instance_state(model).keys() == before.keys()
    for path, state in _instance_state(model).items():
        assert state.keys() == before[path].keys(), path


def test_the_layers_are_flagged_and_the_stack_only_where_transformers_needs_it():
    model = _llama()
    gcshim.apply(model)
    flagged = [path for path, module in model.named_modules()
               if module.__dict__.get("gradient_checkpointing") is hf_flags.ON]
    layers = [f"model.layers.{i}" for i in range(3)]
    # 4.53 to 4.x: the stack's flag turns caching off for the whole stack (see hf_flags)
    stack = ["model"] if (4, 53) <= Version(transformers.__version__).release[:2] < (5, 0) else []
    assert flagged == stack + layers


def test_flagged_layers_checkpoint_once(checkpoint_calls):
    model = _llama()
    gcshim.apply(model)
    ids = torch.randint(64, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    assert len(checkpoint_calls) == 3  # transformers' branch passed through, gcshim checkpointed


def test_transformers_enabled_after_apply_takes_over_without_nesting(checkpoint_calls):
    model = _llama()
    gcshim.apply(model)
    _enable_transformers(model)
    ids = torch.randint(64, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    # transformers checkpoints through its own partial (not the spy), gcshim steps aside
    assert checkpoint_calls == []
    assert _is_checkpointing(model)
    gcshim.remove(model)  # leaves transformers' own choice in place
    assert _is_checkpointing(model)


def test_pass_through_pickles_as_torch_checkpoint():
    options = gcshim.core.torch_checkpoint.make_options(use_reentrant=True)
    restored = pickle.loads(pickle.dumps(hf_flags.PassThrough(options)))
    assert restored.func is torch.utils.checkpoint.checkpoint
    assert restored.keywords["use_reentrant"] is True


def test_plain_torch_models_get_no_transformers_flags():
    model = torch.nn.Sequential(*(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
                                  for _ in range(3)))
    gcshim.apply(model)
    assert not any("gradient_checkpointing" in vars(m) for m in model.modules())


def test_stacks_are_flagged_too_where_transformers_layers_drop_use_cache(monkeypatch):
    """4.53-4.x: the layer's own __call__ turns use_cache off before gcshim sees it, so the
    stack must know too (it would index the missing cache slot)."""
    from packaging.version import Version

    from gcshim.adapters import versions

    class Layer(torch.nn.Module):
        gradient_checkpointing = False  # as transformers' GradientCheckpointingLayer

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.proj(x)

    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(Layer() for _ in range(2))
            self.gradient_checkpointing = False

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    monkeypatch.setattr(versions, "installed_version", lambda package: Version("4.57.6"))
    model = Stack()
    before = dict(vars(model))
    handle = gcshim.apply(model, layers=Layer)
    assert model.gradient_checkpointing is hf_flags.ON and model.gradient_checkpointing
    assert isinstance(model._gradient_checkpointing_func, hf_flags.PassThrough)
    handle.remove()
    assert vars(model).keys() == before.keys() and model.gradient_checkpointing is False
    monkeypatch.setattr(versions, "installed_version", lambda package: Version("5.24.0"))
    gcshim.apply(model, layers=Layer)
    assert model.gradient_checkpointing is False  # 5.x layers return no cache

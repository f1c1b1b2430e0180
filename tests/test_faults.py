"""Faults mid-flight: a layer raising in its forward or in the recompute, an interrupt at each
step of apply, a `layers` callable that raises. The error reaches the user with where it
happened, and the model is left fully applied or fully restored, never in between."""

import copy
import sys

import pytest
import torch
from test_restore import _snapshot
from torch import nn

import gcshim
from gcshim import api
from gcshim.core import patching as patch_module
from gcshim.integrations.transformers import flags as hf_flags
from gcshim.integrations.transformers.answers import TRANSFORMERS


class Flaky(nn.Module):
    """A block that raises when told to, in its forward or only in the recompute."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.fail = None  # None, "forward" or "recompute"

    def forward(self, x):
        if self.fail == "forward" or (self.fail == "recompute" and gcshim.is_recomputing()):
            raise ValueError("bad block")
        return torch.tanh(self.lin(x))


def _net():
    torch.manual_seed(0)
    return nn.Sequential(*[Flaky() for _ in range(3)])


def _context(error):
    notes = getattr(error, "__notes__", None)
    return " ".join(notes) if notes else str(error)


def _grads(model, x):
    model.zero_grad(set_to_none=True)
    model(x).pow(2).sum().backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("phase", ["forward", "recompute"])
def test_a_layer_raising_reaches_the_user_and_the_model_stays_applied(phase, reentrant):
    model = _net()
    reference = _grads(copy.deepcopy(model), torch.ones(2, 8))
    clean = _snapshot(model)
    handle = gcshim.apply(model, use_reentrant=reentrant)
    applied = _snapshot(model)
    model[1].fail = phase
    x = torch.ones(2, 8)
    with pytest.raises(ValueError, match="^bad block") as info:
        _grads(model, x)
    where = "in its forward" if phase == "forward" else "while backward recomputed it"
    assert f"gcshim: raised in checkpointed layer '1' (Flaky) {where}" in _context(info.value)
    assert info.value.__traceback__ is not None
    assert not gcshim.is_recomputing()
    model[1].fail = None
    assert _snapshot(model) == applied and handle.layers == ["0", "1", "2"]
    for got, want in zip(_grads(model, x), reference):  # the next step trains as before
        torch.testing.assert_close(got, want)
    handle.remove()
    assert _snapshot(model) == clean


def _llama():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=2, num_key_value_heads=2,
                                      vocab_size=64, use_cache=False)
    return transformers.LlamaForCausalLM(config)


def _interrupt_on(monkeypatch, module, name, call):
    real = getattr(module, name)
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)
    return calls


# every step apply takes on a transformers model, interrupted at its n-th call
STEPS = [
    (api, "select", 1),
    (api, "find_adapter", 2),
    (patch_module, "patch", 1),
    (patch_module, "patch", 3),
    (hf_flags, "mark", 2),  # a layer's flags, inside patch()
    (patch_module, "CheckpointedForward", 2),  # after that layer's flags were set
    (TRANSFORMERS, "switch_off", 1),  # transformers' flags gcshim takes over, if any
    (hf_flags, "stacks_to_mark", 1),
    (hf_flags, "mark", 4),  # the layer stack's own flag (4.x releases), after every layer's
]


class _Interrupting(patch_module.CheckpointedForward):
    """The wrapper class, interrupted when its n-th instance is made."""

    made = []
    at = 0

    def __init__(self, *args, **kwargs):
        _Interrupting.made.append(1)
        if len(_Interrupting.made) == _Interrupting.at:
            raise KeyboardInterrupt
        super().__init__(*args, **kwargs)


@pytest.mark.parametrize("module,name,call", STEPS,
                         ids=[f"{name}#{call}" for _m, name, call in STEPS])
def test_an_interrupt_at_any_step_of_apply_leaves_the_model_as_it_was(monkeypatch, module,
                                                                       name, call):
    model = _llama().train()
    before = _snapshot(model)
    if name == "CheckpointedForward":
        _Interrupting.made, _Interrupting.at = [], call
        monkeypatch.setattr(patch_module, name, _Interrupting)
        calls = _Interrupting.made
    else:
        if (name, call) == ("mark", 4):  # flag the stack too, as 4.x releases need
            monkeypatch.setattr(hf_flags, "stacks_to_mark", lambda model, paths: [model.model])
        calls = _interrupt_on(monkeypatch, module, name, call)
    with pytest.raises(KeyboardInterrupt):
        gcshim.apply(model)
    assert len(calls) == call  # the fault was injected where meant
    assert _snapshot(model) == before
    assert not gcshim.is_applied(model)
    assert model.is_gradient_checkpointing is False
    monkeypatch.undo()
    gcshim.apply(model).remove()  # and it can be applied and removed afterwards
    assert _snapshot(model) == before


@pytest.mark.parametrize("raised", [RuntimeError("no opinion"), KeyboardInterrupt()])
def test_a_layers_callable_raising_half_way_touches_nothing(raised):
    model = _net()
    before = _snapshot(model)
    seen = []

    def pick(name, module):
        seen.append(name)
        if name == "2":
            raise raised
        return isinstance(module, Flaky)

    with pytest.raises(type(raised)) as info:
        gcshim.apply(model, layers=pick)
    if isinstance(raised, RuntimeError):
        assert "'2' (Flaky)" in str(info.value)
    assert "2" in seen
    assert _snapshot(model) == before and not gcshim.is_applied(model)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are new in 3.11")
def test_the_message_of_the_users_error_is_left_as_it_was():
    model = _net()
    gcshim.apply(model)
    model[0].fail = "forward"
    with pytest.raises(ValueError) as info:
        model(torch.ones(2, 8))
    assert info.value.args == ("bad block",)

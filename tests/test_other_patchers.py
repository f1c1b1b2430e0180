"""gcshim beside other tools that patch forward: a wrapt wrapper on the class, a plain function
replacing the class's forward (liger-kernel style), an instance-level wrapper (accelerate's
hooks), and transformers 5.24's own class-level wrapper. Either may come first, either may be
removed first: both keep working, and each removal restores the other's state exactly, or gcshim
refuses with PatchedOverError where it cannot."""

import copy
import functools

import pytest
import torch
import wrapt
from models import CountsCalls, Mlp, assert_exact_and_recomputed, grads_of
from torch import nn

import gcshim


class Block(CountsCalls, nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.tanh(self.lin(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(3))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def _state(model):
    """Every instance __dict__ (by identity of values; the call counters aside) and Block's
    class __dict__."""
    instances = {path: {k: id(v) for k, v in vars(m).items() if k != "calls"}
                 for path, m in model.named_modules()}
    return instances, dict(vars(Block))


def _step(model, x):
    for m in model.modules():
        if isinstance(m, Block):
            m.calls = 0
    model.zero_grad(set_to_none=True)
    model(x).pow(2).sum().backward()
    return [m.calls for m in model.blocks], [p.grad.clone() for p in model.parameters()]


@pytest.fixture
def net():
    torch.manual_seed(0)
    original = dict(vars(Block))
    yield Net()
    for name in set(vars(Block)) - set(original):  # a failed test must not leak a patch
        delattr(Block, name)
    for name, value in original.items():
        if vars(Block).get(name) is not value:
            setattr(Block, name, value)


X = torch.randn(4, 8)


def _reference(model):
    return _step(copy.deepcopy(model), X)[1]


# -- a wrapt wrapper on the class ----------------------------------------------------------
def _wrapt_on_class(seen):
    def counting(wrapped, instance, args, kwargs):
        seen.append(1)
        return wrapped(*args, **kwargs)

    original = vars(Block)["forward"]
    wrapt.wrap_function_wrapper(Block, "forward", counting)
    return lambda: setattr(Block, "forward", original)


@pytest.mark.parametrize("gcshim_first", [False, True])
@pytest.mark.parametrize("remove_gcshim_first", [False, True])
def test_wrapt_class_wrapper(net, gcshim_first, remove_gcshim_first):
    grads = _reference(net)  # first: deepcopy caches __slotnames__ on the class (torch 2.0)
    clean = _state(net)
    seen = []
    if gcshim_first:
        gcshim.apply(net)
        undo_theirs = _wrapt_on_class(seen)
    else:
        undo_theirs = _wrapt_on_class(seen)
        gcshim.apply(net)
    calls, got = _step(net, X)
    assert calls == [2, 2, 2]  # gcshim recomputed every block
    assert len(seen) == 6  # and their wrapper ran in forward and in the recompute
    for a, b in zip(got, grads):
        torch.testing.assert_close(a, b)
    if remove_gcshim_first:
        gcshim.remove(net)
        seen.clear()
        assert _step(net, X)[0] == [1, 1, 1] and len(seen) == 3  # theirs still works
        undo_theirs()
    else:
        undo_theirs()
        seen.clear()
        assert _step(net, X)[0] == [2, 2, 2] and seen == []  # gcshim still works, theirs gone
        gcshim.remove(net)
    assert _state(net) == clean


# -- a plain function replacing the class's forward (liger-kernel style) ----------------------
def _fused_forward(self, x):
    self.calls += 1
    return torch.tanh(torch.addmm(self.lin.bias, x, self.lin.weight.t()))


@pytest.mark.parametrize("gcshim_first", [False, True])
@pytest.mark.parametrize("remove_gcshim_first", [False, True])
def test_plain_function_replacing_the_class_forward(net, gcshim_first, remove_gcshim_first):
    grads = _reference(net)  # first: deepcopy caches __slotnames__ on the class (torch 2.0)
    clean = _state(net)
    original = vars(Block)["forward"]
    if gcshim_first:
        gcshim.apply(net)
        Block.forward = _fused_forward  # followed by the applied layers from their next call
    else:
        Block.forward = _fused_forward
        gcshim.apply(net)
    calls, got = _step(net, X)
    assert calls == [2, 2, 2]
    for a, b in zip(got, grads):
        torch.testing.assert_close(a, b)
    if remove_gcshim_first:
        gcshim.remove(net)
        assert vars(Block)["forward"] is _fused_forward
        assert _step(net, X)[0] == [1, 1, 1]
        Block.forward = original
    else:
        Block.forward = original
        assert _step(net, X)[0] == [2, 2, 2]  # back to the original, still checkpointed
        gcshim.remove(net)
    assert _state(net) == clean


def test_a_replaced_class_forward_is_what_runs_and_recomputes(net):
    ran = []

    def replacement(self, x):
        ran.append(gcshim.is_recomputing())
        return torch.tanh(self.lin(x))

    original = vars(Block)["forward"]
    gcshim.apply(net)
    Block.forward = replacement
    try:
        _step(net, X)
    finally:
        Block.forward = original
    assert ran.count(False) == 3 and ran.count(True) == 3


# -- an instance-level wrapper (accelerate's hooks) -----------------------------------------
def _hook(module, seen):
    """What accelerate's add_hook_to_module does: a partial over the old forward."""
    old = module.forward

    def new_forward(mod, *args, **kwargs):
        seen.append(1)
        return old(*args, **kwargs)

    module.forward = functools.update_wrapper(functools.partial(new_forward, module), old)
    return old


def test_instance_wrapper_before_gcshim_is_put_back_exactly(net):
    seen = []
    _hook(net.blocks[1], seen)
    theirs = vars(net.blocks[1])["forward"]
    clean = _state(net)
    gcshim.apply(net)
    assert _step(net, X)[0] == [2, 2, 2] and len(seen) == 2
    gcshim.remove(net)
    assert vars(net.blocks[1])["forward"] is theirs
    assert _state(net) == clean


def test_instance_wrapper_over_gcshim_makes_remove_refuse_until_it_is_gone(net):
    clean = _state(net)
    handle = gcshim.apply(net)
    seen = []
    old = _hook(net.blocks[1], seen)
    assert _step(net, X)[0] == [2, 2, 2] and len(seen) == 1  # outside gcshim: no recompute
    applied = _state(net)
    for remove in (lambda: gcshim.remove(net), handle.remove):
        with pytest.raises(gcshim.PatchedOverError, match=r"blocks\.1 \(Block\).*Nothing was"):
            remove()
        assert _state(net) == applied  # nothing removed, every block still checkpointed
    net.blocks[1].forward = old  # the other tool takes its wrapper off (LIFO)
    gcshim.remove(net)
    assert _state(net) == clean
    assert _step(net, X)[0] == [1, 1, 1]


def test_instance_forward_replaced_outright_is_left_and_flags_are_restored():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2,
                                      vocab_size=64, use_cache=False)
    model = transformers.LlamaForCausalLM(config).train()
    layer = model.model.layers[0]
    before = dict(vars(layer))
    gcshim.apply(model)
    assert layer.gradient_checkpointing  # gcshim marked transformers' flag
    theirs = type(layer).forward.__get__(layer)
    layer.forward = theirs  # another tool replaced gcshim's forward (not wrapping it)
    gcshim.remove(model)
    assert vars(layer)["forward"] is theirs
    assert {k: v for k, v in vars(layer).items() if k != "forward"} == before


# -- transformers 5.24's own class-level wrapper ----------------------------------------------
def test_transformers_class_wrapper_is_untouched_and_both_orders_train_alike():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2,
                                      vocab_size=64, use_cache=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).train()
    layer_cls = type(model.model.layers[0])
    ids = torch.randint(64, (2, 8))
    reference = copy.deepcopy(model)
    reference(input_ids=ids, labels=ids).loss.backward()
    class_dict = dict(vars(layer_cls))
    gcshim.apply(model)
    assert_exact_and_recomputed(model, lambda: model(input_ids=ids, labels=ids).loss.backward(),
                                grads_of(reference), rtol=1e-5, atol=1e-6)
    gcshim.remove(model)
    assert dict(vars(layer_cls)) == class_dict
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name, rtol=1e-5, atol=1e-6)


def test_mlp_blocks_with_a_class_wrapper_deepcopy_and_remove():
    """A deep copy (kept applied) of an applied model whose class another tool wrapped carries
    its own patches and removes cleanly."""
    seen = []

    def counting(wrapped, instance, args, kwargs):
        seen.append(1)
        return wrapped(*args, **kwargs)

    class Wrapped(Mlp):
        pass

    wrapt.wrap_function_wrapper(Wrapped, "forward", counting)
    model = nn.Sequential(Wrapped(), Wrapped())
    gcshim.apply(model)
    with gcshim.keep_on_copy():
        twin = copy.deepcopy(model)
    twin(torch.randn(4, 32)).sum().backward()
    assert len(seen) == 4
    gcshim.remove(twin)
    assert all("forward" not in vars(m) for m in twin)
    assert all("forward" in vars(m) for m in model)

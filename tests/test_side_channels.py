"""Layers that pass tensors on other than through their outputs: exact in both modes, or loud.

Reentrant checkpointing runs a layer's forward under no_grad. A tensor the layer hands to later
layers through a dict, an attribute or an object it was passed then carries no graph, and its
gradient is lost without an error; one it reads from inside an object reaches backward twice.
gcshim finds these at a layer's first checkpointed call (run non-reentrant) and checkpoints that
layer non-reentrant from then on, with one warning. A layer writing in place into a tensor held
in an argument object gets that tensor's values back for its recompute, in either mode.
"""

from __future__ import annotations

import collections
import copy
import warnings

import pytest
import torch
from models import CHECK_RUNS, CountsCalls, assert_exact_and_recomputed
from torch import nn

import gcshim
from gcshim import SideChannelError

WIDTH = 8


class Counted(CountsCalls, nn.Module):
    """Counts forward runs: a checkpointed layer runs twice per step (forward, recompute)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(WIDTH, WIDTH)
        self.b = nn.Linear(WIDTH, WIDTH)
        self.calls = 0

    def core(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.b(torch.tanh(self.a(x)))


class DictWriter(Counted):
    """Gemma-4 style KV sharing: early layers store a tensor in a dict, later layers read it."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor, shared: dict) -> torch.Tensor:
        h = self.core(x)
        if self.index == 0:
            shared["kv"] = torch.sigmoid(h)
        else:
            h = h * shared["kv"]
        return h


class AttributeWriter(Counted):
    """MoE-style: the router logits stay on the module for an auxiliary loss."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.core(x)
        self.router_logits = h.mean(-1)
        return h


class Holder:
    """A state object of the caller's (not a tuple, list or dict)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class HiddenReader(Counted):
    """Reads a tensor that needs a gradient from inside an object it is passed."""

    def forward(self, x: torch.Tensor, holder: Holder) -> torch.Tensor:
        return self.core(x) * holder.tensor


class StateWriter(Counted):
    """Writes in place into a state tensor held in an object, after reading it."""

    def forward(self, x: torch.Tensor, state: Holder) -> torch.Tensor:
        h = self.core(torch.tanh(x + state.tensor))
        state.tensor.add_(1.0)
        return h


class Net(nn.Module):
    def __init__(self, kind: str, depth: int = 3) -> None:
        super().__init__()
        self.kind = kind
        self.embed = nn.Linear(WIDTH, WIDTH)
        if kind == "dict":
            self.blocks = nn.ModuleList(DictWriter(i) for i in range(depth))
        else:
            block = {"attribute": AttributeWriter, "hidden": HiddenReader,
                     "state": StateWriter}[kind]
            self.blocks = nn.ModuleList(block() for _ in range(depth))
        self.gate = nn.Parameter(torch.full((WIDTH,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) * self.gate
        shared: dict = {}
        holder = Holder(self.gate * 2)  # needs a gradient (reaches self.gate)
        state = Holder(torch.zeros(WIDTH))
        aux = h.new_zeros(())
        for block in self.blocks:
            if self.kind == "dict":
                h = block(h, shared)
            elif self.kind == "attribute":
                h = block(h)
                aux = aux + block.router_logits.pow(2).sum()
            elif self.kind == "hidden":
                h = block(h, holder)
            else:
                h = block(h, state)
        return h.pow(2).sum() + aux


def _grads(model: nn.Module, steps: int = 2) -> dict:
    torch.manual_seed(1)
    x = torch.randn(4, WIDTH)
    for _ in range(steps):
        model.zero_grad()
        model(x).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _run(kind: str, reentrant: bool, **options):
    torch.manual_seed(0)
    plain = Net(kind)
    model = copy.deepcopy(plain)
    reference = _grads(plain)
    handle = gcshim.apply(model, layers=type(model.blocks[0]), use_reentrant=reentrant, **options)
    for block in model.blocks:
        block.calls = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grads = _grads(model)
    return reference, grads, handle, model, [w for w in caught
                                             if issubclass(w.category, gcshim.GcshimWarning)]


def _assert_exact_and_recomputed(reference, grads, model, steps=2, reentrant=False):
    assert set(grads) == set(reference)
    for name, value in reference.items():
        torch.testing.assert_close(grads[name], value, rtol=1e-5, atol=1e-6, msg=name)
    # every block was patched and ran its forward twice a step (forward and recompute)
    assert all(gcshim.report(model).rows[i].status == "checkpointed"
               for i in range(len(model.blocks)))
    runs = 2 * steps + CHECK_RUNS[reentrant]
    assert [block.calls for block in model.blocks] == [runs] * len(model.blocks)


@pytest.mark.parametrize("kind, where", [
    ("dict", "argument 'shared'"),
    ("attribute", "layer attribute 'router_logits'"),
    ("hidden", "argument 'holder'"),
])
def test_reentrant_side_channel_falls_back_with_one_warning(kind, where):
    reference, grads, handle, model, caught = _run(kind, reentrant=True)
    _assert_exact_and_recomputed(reference, grads, model, reentrant=True)
    fallen = [row for row in handle.report().rows if row.mode == "non-reentrant (fallback)"]
    assert fallen, handle.report()
    assert all(where in row.note for row in fallen)
    # one warning per layer that falls back, each naming the layer, the place and the remedy
    assert len(caught) == len(fallen)
    message = str(caught[0].message)
    assert f"layer '{fallen[0].path}'" in message and where in message
    assert "use_reentrant=False" in message and "strict=True" in message


@pytest.mark.parametrize("kind", ["dict", "attribute", "hidden"])
def test_without_the_check_reentrant_would_be_wrong(kind, monkeypatch):
    """The fallback is what makes these exact: with the probe's verdict forced to 'clean',
    reentrant checkpointing gives other gradients or fails (so the tests above can fail)."""
    from gcshim.core import side_channels

    monkeypatch.setattr(side_channels.Probe, "findings", lambda self: [])
    torch.manual_seed(0)
    plain = Net(kind)
    model = copy.deepcopy(plain)
    reference = _grads(plain)
    gcshim.apply(model, layers=type(model.blocks[0]), use_reentrant=True)
    try:
        grads = _grads(model)
    except RuntimeError:
        return  # backward through a graph twice: loud, but the fallback avoids it
    assert any(not torch.allclose(grads[n], reference[n], rtol=1e-4, atol=1e-6)
               for n in reference)


@pytest.mark.parametrize("kind", ["dict", "attribute", "hidden"])
def test_non_reentrant_needs_no_fallback(kind):
    reference, grads, handle, model, caught = _run(kind, reentrant=False)
    _assert_exact_and_recomputed(reference, grads, model)
    assert caught == []
    assert {row.mode for row in handle.report().rows} == {"non-reentrant"}


def test_in_place_state_is_replayed_for_the_recompute(reentrant):
    reference, grads, handle, model, caught = _run("state", reentrant=reentrant)
    _assert_exact_and_recomputed(reference, grads, model, reentrant=reentrant)
    notes = [row.note for row in handle.report().rows]
    assert all("recompute replays state" in note and "argument 'state'" in note
               for note in notes)


def test_in_place_state_would_be_wrong_without_the_replay(monkeypatch):
    from gcshim.core import side_channels

    monkeypatch.setattr(side_channels.Probe, "replay", lambda self: None)
    torch.manual_seed(0)
    plain = Net("state")
    reference = _grads(plain)
    model = copy.deepcopy(plain)
    gcshim.apply(model, layers=StateWriter)
    grads = _grads(model)
    assert any(not torch.allclose(grads[n], reference[n], rtol=1e-4, atol=1e-6)
               for n in reference)


def test_strict_raises_instead_of_falling_back():
    torch.manual_seed(0)
    model = Net("dict")
    gcshim.apply(model, layers=DictWriter, use_reentrant=True, strict=True)
    with pytest.raises(SideChannelError, match=r"layer 'blocks\.0' \(DictWriter\).*"
                                               r"argument 'shared'.*strict=True"):
        model(torch.randn(2, WIDTH)).backward()
    # and again on the next step: it never trains on quietly
    with pytest.raises(SideChannelError):
        model(torch.randn(2, WIDTH)).backward()


def test_strict_must_be_a_bool():
    with pytest.raises(TypeError, match="strict must be a bool"):
        gcshim.apply(Net("dict"), layers=DictWriter, strict="yes")


def test_clean_layers_stay_reentrant(checkpoint_calls):
    """Only the first call of each layer runs non-reentrant (the check); then reentrant."""
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh()) for _ in range(3)))
    handle = gcshim.apply(model, layers=nn.Sequential, use_reentrant=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            model(torch.randn(2, WIDTH)).sum().backward()
    modes = [kwargs["use_reentrant"] for _args, kwargs in checkpoint_calls]
    assert modes == [False] * 3 + [True] * 3
    assert {row.mode for row in handle.report().rows} == {"reentrant"}
    assert all(row.note == "" for row in handle.report().rows)


def test_a_user_dict_container_is_watched():
    """UserDict (transformers' KVSharingDict) is neither a dict nor taken apart into inputs."""

    class Box(collections.UserDict):
        pass

    class Writer(Counted):
        def forward(self, x, box):
            h = self.core(x)
            box["h"] = h
            return h

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Writer() for _ in range(2))

        def forward(self, x):
            box = Box()
            outs = [block(x, box) for block in self.blocks]
            return sum(o.sum() for o in outs) + box["h"].pow(2).sum()

    torch.manual_seed(0)
    plain = Model()
    reference = _grads(plain)
    model = copy.deepcopy(plain)
    gcshim.apply(model, layers=Writer, use_reentrant=True)
    with pytest.warns(gcshim.GcshimWarning, match="argument 'box'"):
        grads = _grads(model)
    for name, value in reference.items():
        torch.testing.assert_close(grads[name], value)


def test_gemma4_kv_sharing_is_exact_under_reentrant():
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Gemma4TextConfig"):
        pytest.skip(f"transformers {transformers.__version__} has no Gemma 4")
    config = transformers.Gemma4TextConfig(
        vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        hidden_size_per_layer_input=16, vocab_size_per_layer_input=99, num_kv_shared_layers=2,
        layer_types=["sliding_attention", "full_attention"] * 2, sliding_window=8,
        per_layer_config={})
    torch.manual_seed(0)
    plain = transformers.Gemma4ForCausalLM(config).train()
    model = copy.deepcopy(plain)
    ids = torch.randint(0, 99, (2, 7))
    weight = torch.randn(2, 7, 99)

    def step(m):
        m.zero_grad()
        (m(input_ids=ids, use_cache=False).logits * weight).sum().backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    reference = step(plain)
    handle = gcshim.apply(model, use_reentrant=True)
    with pytest.warns(gcshim.GcshimWarning, match="shared_kv_states"):
        step(model)
    grads = {}
    assert_exact_and_recomputed(model, lambda: grads.update(step(model)), reference,
                                rtol=1e-4, atol=1e-6)
    assert set(grads) == set(reference)
    for name, value in reference.items():
        torch.testing.assert_close(grads[name], value, rtol=1e-4, atol=1e-6, msg=name)
    modes = {row.path: row.mode for row in handle.report().rows}
    assert modes and set(modes.values()) == {"non-reentrant (fallback)"}


class GradModeKernel(Counted):
    """A layer whose forward computes other values without grad (as a kernel picked by grad
    mode does: Parakeet's attention on CPU differs in the last bits), with a BatchNorm and a
    dropout whose updates and masks the check must not disturb."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(WIDTH)
        self.drop = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.norm(self.core(x)))
        return h if torch.is_grad_enabled() else h * (1 + 1e-6)


def test_a_forward_that_depends_on_grad_mode_falls_back_under_reentrant():
    torch.manual_seed(0)
    plain = nn.Sequential(*(GradModeKernel() for _ in range(3)))
    model = copy.deepcopy(plain)
    x = torch.randn(6, WIDTH)
    weight = torch.randn(6, WIDTH)

    def step(m):
        torch.manual_seed(5)
        m.zero_grad()
        (m(x) * weight).sum().backward()
        return {n: p.grad.clone() for n, p in m.named_parameters()}

    reference = [step(plain), step(plain)]
    handle = gcshim.apply(model, layers=GradModeKernel, use_reentrant=True)
    for block in model:
        block.calls = 0
    with pytest.warns(gcshim.GcshimWarning, match="computes other values without grad"):
        first = step(model)
    second = step(model)
    for want, got in zip(reference, (first, second)):
        for name, value in want.items():
            torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)
    # the check ran the forward once more, and left no trace: BatchNorm updated once a step
    assert [block.calls for block in model] == [4 + 1, 4 + 1, 4 + 1]
    for mine, theirs in zip(model, plain):
        assert int(mine.norm.num_batches_tracked) == int(theirs.norm.num_batches_tracked) == 2
        torch.testing.assert_close(mine.norm.running_mean, theirs.norm.running_mean)
    assert {row.mode for row in handle.report().rows} == {"non-reentrant (fallback)"}


def test_a_forward_alike_with_and_without_grad_stays_reentrant(checkpoint_calls):
    """Exactly the same layer without the grad-mode branch: no fallback, no warning."""

    class Alike(GradModeKernel):
        def forward(self, x):
            return self.drop(self.norm(self.core(x)))

    model = nn.Sequential(*(Alike() for _ in range(2)))
    handle = gcshim.apply(model, layers=Alike, use_reentrant=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            model(torch.randn(6, WIDTH)).sum().backward()
    assert {row.mode for row in handle.report().rows} == {"reentrant"}
    assert [kwargs["use_reentrant"] for _a, kwargs in checkpoint_calls] == [False, False,
                                                                            True, True]

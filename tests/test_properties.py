"""Property-based: for generated module trees, apply -> train step -> remove gives the reference
gradients, recomputes every checkpointed block, keeps state_dict keys, and restores every class
and instance __dict__ exactly.

Trees: nesting up to 3 deep through ModuleList, ModuleDict and plain containers; repeated and
mixed blocks; tensors passed by position, by keyword, in nested tuples and in dicts; tensor,
tuple and dict outputs; frozen parameters; forwards defined on the class or inherited.
`HYPOTHESIS_PROFILE=stress` (nox -s stress) generates many more than the CI run.
"""

import copy

import pytest
import torch
from models import CHECK_RUNS, CountsCalls
from torch import nn

import gcshim

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")
given, settings, HealthCheck = hypothesis.given, hypothesis.settings, hypothesis.HealthCheck

WIDTH = 6


class BlockBase(CountsCalls, nn.Module):
    """A leaf block; how it is called and what it returns are per instance."""

    def __init__(self, output: str, frozen: bool):
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)
        self.output = output
        self.calls = 0
        if frozen:
            self.lin.requires_grad_(False)

    def _shape(self, y):
        if self.output == "tuple":
            return y, 7  # a non-tensor beside the tensor
        if self.output == "dict":
            return {"out": y, "aux": y.detach()}
        return y

    @staticmethod
    def unpack(out):
        if isinstance(out, tuple):
            return out[0]
        if isinstance(out, dict):
            return out["out"]
        return out


class Positional(BlockBase):
    def forward(self, x):
        self.calls += 1
        return self._shape(torch.tanh(self.lin(x)))


class Keyword(BlockBase):
    def forward(self, x, *, scale=None):
        self.calls += 1
        return self._shape(torch.tanh(self.lin(x)) * scale)


class NestedTuple(BlockBase):
    def forward(self, x, pair):
        self.calls += 1
        cos, (sin, shift) = pair
        return self._shape(torch.tanh(self.lin(x * cos + sin)) + shift)


class DictArgs(BlockBase):
    def forward(self, x, extras=None):
        self.calls += 1
        return self._shape(torch.tanh(self.lin(x) + extras["bias"]))


class InheritsPositional(Positional):
    """Its forward is Positional's."""


BLOCKS = [Positional, Keyword, NestedTuple, DictArgs, InheritsPositional]


class Container(nn.Module):
    """A plain container (no forward of its own is called)."""

    def __init__(self, children):
        super().__init__()
        self.inner = nn.ModuleList(children)


class Tree(nn.Module):
    def __init__(self, stages):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.scale = nn.Parameter(torch.ones(WIDTH))
        self.cos = nn.Parameter(torch.full((WIDTH,), 0.9))
        self.sin = nn.Parameter(torch.full((WIDTH,), 0.1))
        self.bias = nn.Parameter(torch.zeros(WIDTH))

    def blocks(self):
        return [m for m in self.modules() if isinstance(m, BlockBase)]

    def _call(self, block, x):
        if isinstance(block, Keyword):
            out = block(x, scale=self.scale)
        elif isinstance(block, NestedTuple):
            out = block(x, (self.cos, (self.sin, self.bias)))
        elif isinstance(block, DictArgs):
            out = block(x, extras={"bias": self.bias})
        else:
            out = block(x)
        return BlockBase.unpack(out)

    def _walk(self, module, x):
        if isinstance(module, BlockBase):
            return self._call(module, x)
        children = module.inner if isinstance(module, Container) else (
            module.values() if isinstance(module, nn.ModuleDict) else module)
        for child in children:
            x = self._walk(child, x)
        return x

    def forward(self, x):
        for stage in self.stages:
            x = self._walk(stage, x)
        return x


def _block():
    return st.builds(lambda cls, output, frozen: cls(output, frozen), st.sampled_from(BLOCKS),
                     st.sampled_from(["tensor", "tuple", "dict"]), st.booleans())


def _node(depth):
    if depth == 0:
        return _block()
    children = st.lists(_node(depth - 1), min_size=1, max_size=3)
    return st.one_of(
        _block(),
        children.map(nn.ModuleList),
        children.map(lambda kids: nn.ModuleDict({f"k{i}": k for i, k in enumerate(kids)})),
        children.map(Container),
    )


trees = st.lists(_node(2), min_size=1, max_size=4).map(Tree)


def _instances(model):
    """Each module's own __dict__ by identity, its parameter/buffer/child slots included."""
    state = {}
    for path, module in model.named_modules():
        own = {k: id(v) for k, v in vars(module).items() if k != "calls"}
        for slot in ("_parameters", "_buffers", "_modules"):
            own.update({f"{slot}.{k}": id(v) for k, v in vars(module)[slot].items()})
        state[path] = own
    return state


def _classes():
    return {cls: dict(vars(cls)) for cls in [*BLOCKS, BlockBase, Container, Tree]}


def _grads(model, x):
    for block in model.blocks():
        block.calls = 0
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    model(x).pow(2).sum().backward()
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()], x.grad


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(model=trees, reentrant=st.booleans(), by_class=st.booleans())
def test_apply_train_remove_on_generated_trees(model, reentrant, by_class):
    torch.manual_seed(0)
    x = torch.randn(3, WIDTH)
    reference = copy.deepcopy(model)
    want_params, want_input = _grads(reference, x)
    instances, classes = _instances(model), _classes()
    keys = list(model.state_dict())

    layers = tuple(BLOCKS) if by_class else (lambda _name, m: isinstance(m, BlockBase))
    handle = gcshim.apply(model, layers=layers, use_reentrant=reentrant)
    assert sorted(handle.layers) == sorted(p for p, m in model.named_modules()
                                           if isinstance(m, BlockBase))
    assert list(model.state_dict()) == keys
    got_params, got_input = _grads(model, x)
    runs = 2 + CHECK_RUNS[reentrant]  # forward, recompute (and reentrant's check)
    assert [b.calls for b in model.blocks()] == [runs] * len(model.blocks())  # each recomputed
    torch.testing.assert_close(got_input, want_input)
    for got, want in zip(got_params, want_params):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want)

    gcshim.remove(model)
    assert _instances(model) == instances
    assert _classes() == classes
    assert list(model.state_dict()) == keys
    assert [b.calls for b in model.blocks()] == [runs] * len(model.blocks())
    _grads(model, x)
    assert [b.calls for b in model.blocks()] == [1] * len(model.blocks())  # plain again

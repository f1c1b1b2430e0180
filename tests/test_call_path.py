"""The call path of a settled layer: the short way, in few frames (gcshim.core.call)."""

import sys
from pathlib import Path

import pytest
import torch
from models import Block, stack

import gcshim

GCSHIM_DIR = str(Path(gcshim.__file__).resolve().parent)
# gcshim frames of one settled call with tensors by position, forward and backward, in either
# mode: the proxy's __call__, the call's __call__, _checkpoint_positional, the checkpoint call,
# its closure twice (forward, recompute). The flag, nested-checkpoint and DDP checks run in the
# call's frame, a one-tensor output is not taken apart, and nothing counts recomputes
# (is_recomputing() reads the stack). (Before the short path: 19 non-reentrant, 31 reentrant.)
MOST_FRAMES = 6
RUN = {False: "run", True: "run_reentrant"}  # the checkpointed closure of each mode

def _gcshim_frames(step):
    names = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(GCSHIM_DIR):
            names.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        step()
    finally:
        sys.setprofile(None)
    return names


def test_a_settled_layer_takes_the_short_path(reentrant):
    model = stack(depth=1)
    gcshim.apply(model, layers=Block, use_reentrant=reentrant)
    x = torch.randn(2, 8, requires_grad=True)
    for _ in range(2):  # the first call settles the layer
        model(x).sum().backward()
    names = _gcshim_frames(lambda: model(x).sum().backward())
    assert "_checkpoint_positional" in names and "_checkpoint" not in names, names
    assert names.count(RUN[reentrant]) == 2, names  # the forward and one recompute
    assert len(names) <= MOST_FRAMES, names


class KeywordBlock(Block):
    def forward(self, x, *, scale=None):
        return super().forward(x) * scale


class PairBlock(Block):
    def forward(self, x):
        y = super().forward(x)
        return y, (y * 2,)


CALLS = {  # how the test's loss calls each block: reaching every output
    "keyword": (KeywordBlock, lambda layer, x, scale: layer(x, scale=scale)),
    "tuple output": (PairBlock, lambda layer, x, scale: layer(x)[0] * scale + layer(x)[1][0]),
}


@pytest.mark.parametrize("kind", sorted(CALLS))
def test_a_settled_layer_called_by_keyword_or_with_a_tuple_output_is_exact(kind, reentrant):
    """The settled checkpoint of keyword calls, and the positional one taking a nested output
    apart (reentrant): the layer is recomputed and its gradients are the plain step's."""
    block, call = CALLS[kind]
    torch.manual_seed(0)
    plain = block()
    checkpointed = block()
    checkpointed.load_state_dict(plain.state_dict())
    gcshim.apply(torch.nn.Sequential(checkpointed), layers=block, use_reentrant=reentrant)
    x = torch.randn(2, 8, requires_grad=True)
    scale = torch.randn(2, 8, requires_grad=True)
    for _ in range(2):  # the first call settles the layer
        call(checkpointed, x, scale).sum().backward()
    checkpointed.zero_grad()
    x.grad = scale.grad = None
    call(plain, x, scale).sum().backward()
    expected = [p.grad.clone() for p in plain.parameters()] + [x.grad, scale.grad]
    x.grad = scale.grad = None
    before = checkpointed.calls
    names = _gcshim_frames(lambda: call(checkpointed, x, scale).sum().backward())
    if block is KeywordBlock:  # a keyword call: the long way's checks, then the short call
        assert "_checkpoint_settled" in names, names
    else:
        assert "_checkpoint_positional" in names and "_checkpoint" not in names, names
    forwards = 1 if block is KeywordBlock else 2
    assert checkpointed.calls - before == 2 * forwards  # each forward recomputed once
    got = [p.grad for p in checkpointed.parameters()] + [x.grad, scale.grad]
    for want, have in zip(expected, got):
        torch.testing.assert_close(have, want)


def test_a_call_the_short_path_cannot_take_goes_the_long_way(reentrant):
    model = stack(depth=1)
    gcshim.apply(model, layers=Block, use_reentrant=reentrant)
    x = torch.randn(2, 8, requires_grad=True)
    for _ in range(2):
        model(x).sum().backward()
    frozen = torch.randn(2, 8)  # no input needs a gradient: the long way decides
    names = _gcshim_frames(lambda: model(frozen).sum().backward())
    assert "_checkpoint" in names, names
    assert model[0].lin.weight.grad is not None

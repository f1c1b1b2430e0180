"""The call path of a settled layer: the short way, in few frames (gcshim.core.call)."""

import sys
from pathlib import Path

import torch
from models import Block, stack

import gcshim

GCSHIM_DIR = str(Path(gcshim.__file__).resolve().parent)
# gcshim frames of one settled call, forward and backward: the proxy's __call__, the call's
# __call__, _checkpoint_settled, the checkpoint call, run twice (forward, recompute); reentrant
# adds the DDP check and the holder of a tuple output's layout (a one-tensor output needs no
# flattening). The flag and nested-checkpoint checks run in the call's frame, and nothing counts
# recomputes (is_recomputing() reads the stack). (Before the short path: 19, 31.)
MOST_FRAMES = {False: 6, True: 8}


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
    assert "_checkpoint_settled" in names and "_checkpoint" not in names, names
    assert names.count("run") == 2, names  # the forward and one recompute
    assert len(names) <= MOST_FRAMES[reentrant], names


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

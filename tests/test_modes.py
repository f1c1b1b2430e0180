"""Behaviour 4: checkpoint only in training with grad enabled; otherwise the original forward."""


import pytest
import torch
from models import RopeLikeModel, warnings_as_errors

import gcshim


@pytest.mark.parametrize(
    "context",
    ["eval", "no_grad", "inference_mode", "eval+grad"],
)
def test_original_forward_runs_untouched(checkpoint_calls, context, reentrant):
    model = RopeLikeModel().train()
    ids = torch.randint(32, (2, 5))
    expected = model(ids).detach()
    gcshim.apply(model, use_reentrant=reentrant)
    calls = checkpoint_calls
    if context.startswith("eval"):
        model.eval()
    guard = {
        "no_grad": torch.no_grad,
        "inference_mode": torch.inference_mode,
    }.get(context, torch.enable_grad)
    with warnings_as_errors():
        with guard():
            out = model(ids)
    assert calls == []
    torch.testing.assert_close(out.detach(), expected)
    if context == "eval+grad":
        out.backward()  # a plain autograd graph, no recompute
        assert [layer.first_calls for layer in model.layers] == [2, 2, 2]


def test_training_mode_of_the_layer_itself_decides(checkpoint_calls):
    model = RopeLikeModel().train()
    gcshim.apply(model)
    calls = checkpoint_calls
    model.layers[1].eval()
    model(torch.randint(32, (2, 5))).backward()
    assert len(calls) == 2

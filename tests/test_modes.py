"""Behaviour 4: checkpoint only in training with grad enabled; otherwise the original forward."""

import warnings

import pytest
import torch
from models import RopeLikeModel

import gcshim


def _spy_checkpoint(monkeypatch):
    import torch.utils.checkpoint as tc

    calls = []
    real = tc.checkpoint

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tc, "checkpoint", spy)
    return calls


@pytest.mark.parametrize(
    "context",
    ["eval", "no_grad", "inference_mode", "eval+grad"],
)
@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_original_forward_runs_untouched(monkeypatch, context, reentrant):
    model = RopeLikeModel().train()
    ids = torch.randint(32, (2, 5))
    expected = model(ids).detach()
    gcshim.apply(model, use_reentrant=reentrant)
    calls = _spy_checkpoint(monkeypatch)
    if context.startswith("eval"):
        model.eval()
    guard = {
        "no_grad": torch.no_grad,
        "inference_mode": torch.inference_mode,
    }.get(context, torch.enable_grad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with guard():
            out = model(ids)
    assert calls == []
    torch.testing.assert_close(out.detach(), expected)
    if context == "eval+grad":
        out.backward()  # a plain autograd graph, no recompute
        assert [layer.first_calls for layer in model.layers] == [2, 2, 2]


def test_training_mode_of_the_layer_itself_decides(monkeypatch):
    model = RopeLikeModel().train()
    gcshim.apply(model)
    calls = _spy_checkpoint(monkeypatch)
    model.layers[1].eval()
    model(torch.randint(32, (2, 5))).backward()
    assert len(calls) == 2

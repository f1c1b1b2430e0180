"""Behaviour 5: no double checkpointing; apply twice is a no-op; remove twice is harmless."""

import logging

import torch
from models import RopeLikeModel, as_transformers_code
from torch import nn

import gcshim


def test_apply_twice_is_a_noop_with_a_notice(gcshim_log):
    model = RopeLikeModel()
    first = gcshim.apply(model)
    wrappers = [layer.__dict__["forward"] for layer in model.layers]
    second = gcshim.apply(model, use_reentrant=True)
    assert second is first
    assert [layer.__dict__["forward"] for layer in model.layers] == wrappers
    assert all(row.mode == "non-reentrant" for row in gcshim.report(model).rows)
    notices = [r for r in gcshim_log.records if "already applied" in r.getMessage()]
    assert len(notices) == 1 and notices[0].levelno == logging.WARNING


def test_remove_twice_is_harmless():
    model = RopeLikeModel()
    handle = gcshim.apply(model)
    handle.remove()
    handle.remove()
    gcshim.remove(model)
    assert not gcshim.is_applied(model)
    assert handle.layers == []


def test_apply_after_remove_works_again():
    model = RopeLikeModel()
    gcshim.apply(model).remove()
    handle = gcshim.apply(model, use_reentrant=True)
    assert len(handle.layers) == 3
    assert {row.mode for row in handle.report().rows} == {"reentrant"}


def test_an_earlier_apply_on_a_submodule_is_respected():
    model = RopeLikeModel()
    inner = gcshim.apply(model.layers[0], layers=nn.Linear)
    assert inner.layers == ["first", "second"]
    handle = gcshim.apply(model)
    # layers.0 holds checkpointed sub-layers: checkpointing it too would nest checkpoints.
    assert handle.layers == ["layers.1", "layers.2"]
    skipped = {r.path: r.status for r in handle.report().rows if r.path == "layers.0"}
    assert "already checkpointed by gcshim" in skipped["layers.0"]
    handle.remove()
    assert inner.layers == ["first", "second"]  # the other apply's patches stay


def test_torch_checkpoint_wrapper_is_left_alone(gcshim_log):
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        checkpoint_wrapper,
    )

    model = RopeLikeModel()
    # torch 2.0/2.1 default to its reentrant implementation, which mishandles keyword tensors.
    model.layers[1] = checkpoint_wrapper(
        model.layers[1], checkpoint_impl=CheckpointImpl.NO_REENTRANT
    )
    handle = gcshim.apply(model, layers="RopeLikeBlock")
    assert handle.layers == ["layers.0", "layers.2"]
    report = str(gcshim.report(model))
    assert "layers.1._checkpoint_wrapped_module" in report and "CheckpointWrapper" in report
    ids = torch.randint(32, (2, 5))
    model(ids).backward()  # still trains, checkpointed once
    assert model.layers[1]._checkpoint_wrapped_module.first_calls == 2


def test_transformers_own_flag_is_respected():
    model = as_transformers_code(RopeLikeModel())
    for layer in model.layers:
        layer.gradient_checkpointing = False
    model.layers[2].gradient_checkpointing = True
    handle = gcshim.apply(model)
    assert handle.layers == ["layers.0", "layers.1"]
    skipped = [r for r in handle.report().rows if r.status.startswith("skipped")]
    assert [(r.path, "transformers" in r.status) for r in skipped] == [("layers.2", True)]


def test_flag_turned_on_after_apply_means_no_nesting(checkpoint_calls):
    calls = checkpoint_calls
    model = RopeLikeModel().train()
    gcshim.apply(model)
    model.layers[0].gradient_checkpointing = True  # now the layer's own code would checkpoint
    model(torch.randint(32, (2, 5))).backward()
    assert len(calls) == 2


def test_stack_level_flag_covers_its_layers():
    """transformers < 4.52 keeps the flag on the stack module, which checkpoints its layers."""
    model = as_transformers_code(RopeLikeModel())
    model.gradient_checkpointing = True
    handle = gcshim.apply(model)
    assert handle.layers == []
    assert [r.status for r in handle.report().rows] == [
        "skipped: transformers' own gradient checkpointing is on"
    ] * 3


def test_a_flag_on_code_outside_transformers_is_taken_over():
    """A layer or stack of user code (a subclass, a copy) carrying transformers' flag: gcshim
    checkpoints it instead (transformers' branch there may close over keyword tensors), with
    the flag off until remove()."""
    model = RopeLikeModel()
    model.gradient_checkpointing = True
    model.layers[2].gradient_checkpointing = True
    handle = gcshim.apply(model)
    assert handle.layers == ["layers.0", "layers.1", "layers.2"]
    assert model.gradient_checkpointing is False
    model(torch.randint(32, (2, 5))).backward()
    assert [layer.first_calls for layer in model.layers] == [2, 2, 2]
    handle.remove()
    assert model.gradient_checkpointing is True
    assert model.layers[2].gradient_checkpointing is True

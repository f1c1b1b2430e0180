"""Behaviours 1, 2 and 9: same gradients, real recomputation, every tensor a checkpoint input."""

import copy
import dataclasses
import warnings

import pytest
import torch
from models import (
    CHECK_RUNS,
    RopeLikeModel,
    assert_exact_and_recomputed,
    assert_same_grads,
    grads_of,
    not_torchs_own,
    warnings_as_errors,
)
from torch import nn

import gcshim


def _ids():
    return torch.randint(32, (4, 6))


def _reference(model, ids):
    loss = model(ids)
    loss.backward()
    grads = grads_of(model)
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_grads_equal_and_every_layer_recomputes(reentrant):
    model = RopeLikeModel().train()
    ids = _ids()
    loss_ref, grads_ref = _reference(model, ids)
    for layer in model.layers:
        layer.first_calls = 0
    handle = gcshim.apply(model, use_reentrant=reentrant)
    assert handle.layers == ["layers.0", "layers.1", "layers.2"]

    loss = model(ids)
    check = CHECK_RUNS[reentrant]  # the first step's check of the forward without grad
    assert [layer.first_calls for layer in model.layers] == [1 + check] * 3
    loss.backward()
    # The first op of every checkpointed layer ran again during backward.
    assert [layer.first_calls for layer in model.layers] == [2 + check] * 3
    torch.testing.assert_close(loss.detach(), loss_ref, rtol=0, atol=1e-5)
    # Includes the grads of tensors that reach the layers only by keyword, in a tuple, in a dict.
    assert_same_grads(grads_ref, model)
    model.zero_grad(set_to_none=True)  # and again, as one helper checks it everywhere
    assert_exact_and_recomputed(model, lambda: model(ids).backward(), grads_ref)
    for name in ("scale", "rope", "bias"):
        assert model.get_parameter(name).grad.abs().sum() > 0


def test_float64_gradients_are_exact():
    model = RopeLikeModel().double().train()
    ids = _ids()
    _, grads_ref = _reference(model, ids)
    gcshim.apply(model)
    assert_exact_and_recomputed(model, lambda: model(ids).backward(), grads_ref)
    for name, grad in grads_of(model).items():
        assert torch.equal(grad, grads_ref[name]), name


def test_torch_alone_rejects_keyword_tensors_under_reentrant():
    """The trap the test above covers: torch's reentrant checkpoint with tensors by keyword."""
    from torch.utils.checkpoint import checkpoint

    block = RopeLikeModel().layers[0]
    x = torch.randn(2, 16, requires_grad=True)
    scale = torch.ones(16, requires_grad=True)
    with pytest.raises(ValueError, match="Unexpected keyword"):
        checkpoint(block, x, scale=scale, use_reentrant=True)


def test_frozen_inputs_still_give_parameter_grads(reentrant):
    """Frozen embeddings / LoRA: no input requires grad, the layers' parameters still learn."""
    model = RopeLikeModel().train()
    for name in ("embed.weight", "scale", "rope", "bias"):
        model.get_parameter(name).requires_grad_(False)
    ids = _ids()
    _, grads_ref = _reference(model, ids)
    assert "layers.0.first.weight" in grads_ref
    gcshim.apply(model, use_reentrant=reentrant)
    with warnings_as_errors():  # "None of the inputs have requires_grad" must not appear
        assert_exact_and_recomputed(model, lambda: model(ids).backward(), grads_ref)


def test_fully_frozen_layer_runs_without_checkpoint_or_warning(reentrant):
    model = RopeLikeModel().train()
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    gcshim.apply(model, use_reentrant=reentrant)
    with warnings_as_errors():
        model(_ids()).backward()
    assert model.head.weight.grad is not None
    assert [layer.first_calls for layer in model.layers] == [1, 1, 1]


def test_no_torch_warnings_leak(reentrant):
    model = RopeLikeModel().train()
    gcshim.apply(model, use_reentrant=reentrant)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(_ids()).backward()
        with torch.no_grad():
            model(_ids())
    assert not_torchs_own(caught) == []


def test_checkpoint_gets_every_tensor_positionally_and_explicit_use_reentrant(checkpoint_calls):
    seen = checkpoint_calls
    model = RopeLikeModel().train()
    gcshim.apply(model)
    model(_ids()).backward()
    assert len(seen) == 3
    for args, kwargs in seen:
        assert kwargs == {"use_reentrant": False, "preserve_rng_state": True}
        # hidden_states, scale=, position_embeddings=(cos, sin), extras={"bias": ...}
        assert len(args) == 5 and all(isinstance(a, torch.Tensor) for a in args)


class DropoutBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 16)
        self.drop = nn.Dropout(0.5)

    def forward(self, x, *, gate):
        return x + self.drop(self.lin(x)) * gate


def test_dropout_masks_match_with_rng_preserved(reentrant):
    model = nn.Sequential(DropoutBlock(), DropoutBlock())

    def run(m):
        torch.manual_seed(7)
        x = torch.randn(8, 16)
        gate = torch.full((16,), 2.0, requires_grad=True)
        out = x
        for block in m:
            out = block(out, gate=gate)
        out.pow(2).sum().backward()
        return gate.grad

    reference = copy.deepcopy(model)
    gate_ref = run(reference)
    gcshim.apply(model, use_reentrant=reentrant)
    grads = {}
    assert_exact_and_recomputed(model, lambda: grads.update(gate=run(model)),
                                grads_of(reference))
    torch.testing.assert_close(grads["gate"], gate_ref)


class BiasPassingBlock(nn.Module):
    """T5-like: takes a learned position bias positionally and hands it on in its output."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)

    def forward(self, hidden_states, position_bias):
        return self.norm(self.lin(hidden_states) + position_bias), position_bias


def test_an_input_returned_as_output_keeps_its_gradient(reentrant):
    model = nn.ModuleList([BiasPassingBlock(), BiasPassingBlock()])
    bias = torch.randn(16, requires_grad=True)
    h0 = torch.randn(3, 16)

    def run():
        h, b = h0, bias * 1.0
        for block in model:
            h, b = block(h, b)
        (h.pow(2).sum() + b.sum()).backward()

    run()
    reference, reference_bias = grads_of(model), bias.grad.clone()
    model.zero_grad(set_to_none=True)
    bias.grad = None
    gcshim.apply(nn.Sequential(model), layers=BiasPassingBlock, use_reentrant=reentrant)
    assert_exact_and_recomputed(model, run, reference)
    torch.testing.assert_close(bias.grad, reference_bias)


@dataclasses.dataclass
class LayerOutput:
    hidden_states: torch.Tensor
    aux: dict


class StructuredOutputBlock(nn.Module):
    """Returns its tensors inside a dataclass and a dict, as ModelOutput-returning modules do."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 16)

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        return LayerOutput(hidden_states=x + h, aux={"energy": h.pow(2).mean()})


def test_tensors_inside_dataclass_and_dict_outputs_keep_gradients(reentrant):
    model = nn.Sequential(StructuredOutputBlock(), StructuredOutputBlock())

    def run():
        x = torch.randn(4, 16, generator=torch.Generator().manual_seed(3))
        loss = 0
        for block in model:
            out = block(x)
            x, loss = out.hidden_states, loss + out.aux["energy"]
        (loss + x.sum()).backward()

    run()
    reference = grads_of(model)
    model.zero_grad(set_to_none=True)
    gcshim.apply(model, use_reentrant=reentrant)
    assert_exact_and_recomputed(model, run, reference)


class TwoStreamBlock(nn.Module):
    """Returns a second stream beside its hidden states (LiLT's layout stream, attention
    weights, router logits): the model reads it from some layers and not from others."""

    def __init__(self):
        super().__init__()
        self.main = nn.Linear(16, 16)
        self.side = nn.Linear(16, 16)

    def forward(self, x):
        return torch.tanh(self.main(x)) + x, self.side(x)


def _two_stream_step(model, x):
    def step():
        h, side = x, None
        for block in model:
            h, side = block(h)
        (h.sum() + side.pow(2).sum()).backward()  # only the last block's side stream is read

    return step


def test_outputs_nobody_reads_leave_their_parameters_without_gradient(reentrant):
    """The plain step gives no gradient (None) to a parameter feeding only an unused output;
    an optimizer skips it. Reentrant checkpoint on its own gives zeros there (AdamW would
    decay and move it)."""
    model = nn.Sequential(TwoStreamBlock(), TwoStreamBlock(), TwoStreamBlock())
    step = _two_stream_step(model, torch.randn(4, 16, requires_grad=True))
    step()
    reference = grads_of(model)
    assert "0.side.weight" not in reference and "2.side.weight" in reference
    model.zero_grad(set_to_none=True)
    gcshim.apply(model, use_reentrant=reentrant)
    for _ in range(2):  # the first reentrant step checks each layer (non-reentrant)
        model.zero_grad(set_to_none=True)
        assert_exact_and_recomputed(model, step, reference)


def test_reentrant_would_give_zeros_to_unused_outputs_without_the_hook(monkeypatch):
    from gcshim.core import call

    monkeypatch.setattr(call, "unused_outputs", lambda outputs: None)
    model = nn.Sequential(TwoStreamBlock(), TwoStreamBlock())
    step = _two_stream_step(model, torch.randn(4, 16, requires_grad=True))
    gcshim.apply(model, use_reentrant=True)
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        step()
    assert torch.count_nonzero(model[0].side.weight.grad) == 0  # zeros, where plain has None


def test_transformers_model_output_round_trips():
    transformers = pytest.importorskip("transformers")
    from gcshim.core import tree

    output = transformers.modeling_outputs.BaseModelOutput(
        last_hidden_state=torch.ones(2), hidden_states=(torch.zeros(1),)
    )
    tensors, skeleton = tree.flatten(output)
    rebuilt = tree.unflatten(skeleton, [t + 1 for t in tensors])
    assert type(rebuilt) is type(output)
    assert torch.equal(rebuilt.last_hidden_state, torch.full((2,), 2.0))
    assert torch.equal(rebuilt[1][0], torch.ones(1))
    assert "attentions" not in rebuilt

"""offload=True and the ready-made selective checkpointing policies."""

import copy
import logging

import pytest
import torch
from models import Mlp
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import gcshim
from gcshim import api
from gcshim.core.offload import Offloader, _OnHost
from gcshim.core.torch_checkpoint import non_reentrant_saves_inputs

# offload on torch 2.0 takes reentrant checkpointing (the test below shows the refusal)
OFFLOADABLE = {} if non_reentrant_saves_inputs() else {"use_reentrant": True}


class HostCopies(Offloader):
    """A CPU stand-in for the CUDA copies: records what would move, and when it comes back."""

    def __init__(self, min_bytes):
        super().__init__(min_bytes)
        self.sent, self.fetched = [], 0

    def worth_moving(self, tensor):
        return tensor.is_contiguous() and tensor.numel() * tensor.element_size() >= self.min_bytes

    def send(self, tensor):
        self.sent.append(tuple(tensor.shape))
        return _OnHost(tensor.detach().clone(), tensor.device, None)

    def fetch(self, packed):
        self.fetched += 1
        return packed.host


def _train(model, x):
    model(x).pow(2).sum().backward()


def test_offload_moves_every_checkpointed_input_but_the_last_layers(monkeypatch, reentrant):
    if not reentrant and not non_reentrant_saves_inputs():
        pytest.skip(f"torch {torch.__version__}: offload needs use_reentrant=True here "
                    "(refused with UnsupportedOptionError, see the test below)")
    offloader = HostCopies(min_bytes=1024)
    monkeypatch.setattr(api, "_offloader", lambda offload: offloader if offload else None)
    model = nn.Sequential(*[Mlp() for _ in range(4)])
    reference = copy.deepcopy(model)
    x = torch.randn(64, 32, requires_grad=True)
    gcshim.apply(model, offload=True, use_reentrant=reentrant)
    model(x).pow(2).sum().backward()
    assert offloader.sent == [(64, 32)] * 3  # layers 0-2; layer 3's input stays
    assert offloader.fetched == 3  # each came back for its recompute
    x_ref = x.detach().clone().requires_grad_()
    reference(x_ref).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


@pytest.mark.parametrize("entry", ["apply", "plan"])
def test_offload_is_refused_where_non_reentrant_checkpoint_hides_its_inputs(monkeypatch, entry):
    """torch 2.0's non-reentrant checkpoint keeps inputs in a closure: offload could not move
    them, so it is an error rather than a silent no-op; reentrant offload still works there."""
    monkeypatch.setattr(api, "non_reentrant_saves_inputs", lambda: False)
    model = nn.Sequential(*[Mlp() for _ in range(3)])
    before = {id(m): dict(vars(m)) for m in model.modules()}
    x = torch.randn(8, 32)
    with pytest.raises(gcshim.UnsupportedOptionError, match="use_reentrant=True or upgrade"):
        if entry == "apply":
            gcshim.apply(model, offload=True)
        else:
            gcshim.plan(model, (x,), budget="1GiB", offload=True)
    assert {id(m): dict(vars(m)) for m in model.modules()} == before
    assert not gcshim.is_applied(model)
    gcshim.apply(model, offload=True, use_reentrant=True).remove()


def test_offload_leaves_small_tensors_on_the_device(monkeypatch):
    offloader = HostCopies(min_bytes=1 << 20)
    monkeypatch.setattr(api, "_offloader", lambda offload: offloader)
    model = nn.Sequential(*[Mlp() for _ in range(3)])
    gcshim.apply(model, offload=True, **OFFLOADABLE)
    _train(model, torch.randn(8, 32))
    assert offloader.sent == [] and offloader.fetched == 0


def test_offload_without_cuda_is_a_noop_with_one_notice(gcshim_log):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    model = nn.Sequential(*[Mlp() for _ in range(3)])
    reference = copy.deepcopy(model)
    handle = gcshim.apply(model, offload=True, **OFFLOADABLE)
    assert len(handle.layers) == 3
    x = torch.randn(8, 32)
    _train(model, x)
    _train(reference, x)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    handle.remove()
    gcshim.apply(model, offload=True, **OFFLOADABLE)
    notices = [r for r in gcshim_log.records if "offload=True does nothing" in r.getMessage()]
    assert len(notices) == 1 and notices[0].levelno == logging.INFO


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offload_on_cuda_keeps_gradients_and_lowers_the_peak(reentrant):
    from gcshim.budget.memory import peak_bytes

    if not reentrant and not non_reentrant_saves_inputs():
        pytest.skip(f"torch {torch.__version__}: offload needs use_reentrant=True here")
    device = torch.device("cuda")
    model = nn.Sequential(*[Mlp(256) for _ in range(6)]).to(device)
    reference = copy.deepcopy(model)
    x = torch.randn(4096, 256, device=device)
    gcshim.apply(reference, use_reentrant=reentrant)
    full = peak_bytes(lambda: _train(reference, x), device)
    gcshim.apply(model, offload=True, use_reentrant=reentrant)
    offloaded = peak_bytes(lambda: _train(model, x), device)
    assert offloaded < full
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


# -- selective checkpointing ----------------------------------------------------------------
needs_sac = pytest.mark.skipif(
    not hasattr(torch.utils.checkpoint, "create_selective_checkpoint_contexts"),
    reason="selective checkpointing needs torch>=2.5")


class CountMatmuls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
            self.count += 1
        return func(*args, **(kwargs or {}))


def _backward_matmuls(model, x):
    loss = model(x).pow(2).sum()
    with CountMatmuls() as counter:
        loss.backward()
    return counter.count


@needs_sac
def test_save_matmuls_keeps_matmul_outputs_instead_of_recomputing_them():
    x = torch.randn(16, 32)
    plain = nn.Sequential(*[Mlp() for _ in range(3)])
    full, selective = copy.deepcopy(plain), copy.deepcopy(plain)
    baseline = _backward_matmuls(plain, x)
    gcshim.apply(full)
    gcshim.apply(selective, context_fn=gcshim.sac.save_matmuls())
    assert _backward_matmuls(full, x) > baseline  # the recompute runs matmuls again
    assert _backward_matmuls(selective, x) == baseline  # none recomputed
    for p, q in zip(selective.parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


@needs_sac
def test_save_ops_accepts_packets_and_rejects_non_ops():
    context_fn = gcshim.sac.save_ops(torch.ops.aten.mm, torch.ops.aten.addmm.default)
    assert torch.ops.aten.mm.default in context_fn.args[0]
    with pytest.raises(TypeError, match="torch ops"):
        gcshim.sac.save_ops("mm")
    with pytest.raises(ValueError, match="at least one op"):
        gcshim.sac.save_ops()


def test_sac_on_a_torch_without_it_is_a_clear_error(monkeypatch):
    monkeypatch.delattr(torch.utils.checkpoint, "create_selective_checkpoint_contexts",
                        raising=False)
    with pytest.raises(gcshim.UnsupportedOptionError, match="torch>=2.5"):
        gcshim.sac.save_matmuls()

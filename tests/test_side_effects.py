"""Running forward twice (the recompute) changes nothing an un-checkpointed step would not."""

import copy
import threading

import pytest
import torch
from models import CHECK_RUNS, assert_exact_and_recomputed, grads_of
from torch import nn

import gcshim


class ConvBlock(nn.Module):
    def __init__(self, channels=4):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x):
        return x + torch.relu(self.norm(self.conv(x)))


class EmaBlock(nn.Module):
    """Updates a buffer in place and reassigns another in forward."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.register_buffer("ema", torch.zeros(8))
        self.register_buffer("last_input_norm", torch.zeros(()))

    def forward(self, x):
        with torch.no_grad():
            self.ema.mul_(0.9).add_(x.mean(0), alpha=0.1)
            self.last_input_norm = x.norm().detach()
        return torch.tanh(self.lin(x))


def _step(model, x):
    model(x).pow(2).sum().backward()


def test_batchnorm_running_stats_equal_the_uncheckpointed_step(reentrant):
    model = nn.Sequential(*[ConvBlock() for _ in range(3)])
    reference = copy.deepcopy(model)
    x = torch.randn(2, 4, 6, 6)
    gcshim.apply(model, use_reentrant=reentrant)
    for _ in range(2):
        _step(reference, x)
        assert_exact_and_recomputed(model, lambda: _step(model, x), grads_of(reference))
    for (name, ours), theirs in zip(model.named_buffers(), reference.buffers()):
        torch.testing.assert_close(ours, theirs, msg=name, rtol=0, atol=0)
    assert int(model[0].norm.num_batches_tracked) == 2


def test_buffers_updated_or_reassigned_in_forward_change_once(reentrant):
    model = nn.Sequential(EmaBlock(), EmaBlock())
    reference = copy.deepcopy(model)
    x = torch.randn(4, 8)
    gcshim.apply(model, use_reentrant=reentrant)
    _step(reference, x)
    assert_exact_and_recomputed(model, lambda: _step(model, x), grads_of(reference))
    for (name, ours), theirs in zip(model.named_buffers(), reference.buffers()):
        torch.testing.assert_close(ours, theirs, msg=name, rtol=0, atol=0)


class RangeBlock(nn.Module):
    """Reads, in its training forward, a running range that the same forward updates (I-BERT's
    quantisation ranges): the recompute must read the range the forward read."""

    def __init__(self, in_place):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.in_place = in_place
        self.register_buffer("range", torch.ones(()))

    def forward(self, x):
        h = self.lin(x)
        scale = 1.0 / self.range
        with torch.no_grad():
            updated = 0.5 * self.range + 0.5 * h.abs().max()
            if self.in_place:
                self.range.copy_(updated)
            else:
                self.range = updated
        return torch.tanh(h * scale) + x


@pytest.mark.parametrize("in_place", [True, False], ids=["written", "reassigned"])
def test_a_buffer_the_forward_reads_and_updates_is_read_as_the_forward_read_it(in_place,
                                                                                reentrant):
    model = nn.Sequential(RangeBlock(in_place), RangeBlock(in_place))
    reference = copy.deepcopy(model)
    x = torch.randn(4, 8)
    gcshim.apply(model, use_reentrant=reentrant)
    for _ in range(3):  # the first call of a layer learns what it writes
        reference.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        _step(reference, x)
        assert_exact_and_recomputed(model, lambda: _step(model, x), grads_of(reference))
        for (name, ours), theirs in zip(model.named_buffers(), reference.buffers()):
            torch.testing.assert_close(ours, theirs, msg=name, rtol=0, atol=0)


def test_a_recompute_reading_the_updated_range_would_be_wrong(monkeypatch):
    from gcshim.core import side_effects

    original = side_effects.changed_buffers
    monkeypatch.setattr(side_effects, "changed_buffers", lambda watched, copies=None: [
        (owner, name, owner._buffers[name]) for owner, name, _ in original(watched, copies)])
    model = nn.Sequential(RangeBlock(False), RangeBlock(False))
    reference = copy.deepcopy(model)
    x = torch.randn(4, 8)
    gcshim.apply(model)
    _step(reference, x)
    _step(model, x)
    assert not torch.allclose(model[0].lin.weight.grad, reference[0].lin.weight.grad)


def test_without_the_guard_the_recompute_would_update_twice(monkeypatch):
    """The guard is what keeps the stats right: switched off, they come out different."""
    from gcshim.core import side_effects

    monkeypatch.setattr(side_effects, "changed_buffers", lambda watched, copies=None: [])
    model = nn.Sequential(ConvBlock(), ConvBlock())
    reference = copy.deepcopy(model)
    x = torch.randn(2, 4, 6, 6)
    gcshim.apply(model)
    _step(reference, x)
    _step(model, x)
    assert int(model[0].norm.num_batches_tracked) == 2
    assert not torch.equal(model[0].norm.running_mean, reference[0].norm.running_mean)


class RecordingBlock(nn.Module):
    def __init__(self, seen):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        # a function, not the list: what the layer holds is put back after its recompute
        self.record = seen.append

    def forward(self, x):
        self.record(gcshim.is_recomputing())
        return self.lin(x).relu()


def test_is_recomputing_is_true_only_in_the_recompute(reentrant):
    seen = []
    model = nn.Sequential(RecordingBlock(seen), RecordingBlock(seen))
    gcshim.apply(model, use_reentrant=reentrant)
    assert not gcshim.is_recomputing()
    out = model(torch.randn(3, 8, requires_grad=True))
    # reentrant's first step checks each forward without grad: a run that is not the forward
    check = [True] * CHECK_RUNS[reentrant]
    assert seen == [*check, False, *check, False]
    out.sum().backward()
    assert seen == [*check, False, *check, False, True, True]
    assert not gcshim.is_recomputing()
    out = model(torch.randn(3, 8, requires_grad=True))  # later steps: forward, recompute
    out.sum().backward()
    assert seen[-4:] == [False, False, True, True]
    model.eval()
    model(torch.randn(3, 8))
    assert seen[-2:] == [False, False]


def test_is_recomputing_is_per_thread(reentrant):
    """While one thread runs a recompute, another thread's forward is not one."""
    in_recompute, release = threading.Event(), threading.Event()

    class WaitsInRecompute(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            if gcshim.is_recomputing() and threading.current_thread() is not main:
                in_recompute.set()
                assert release.wait(30)
            return self.lin(x)

    main = threading.current_thread()
    model = nn.Sequential(WaitsInRecompute(), WaitsInRecompute())
    gcshim.apply(model, use_reentrant=reentrant)
    for _ in range(2):  # settled: the short call path
        model(torch.randn(2, 4, requires_grad=True)).sum().backward()
    seen = []

    class Recording(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            seen.append(gcshim.is_recomputing())
            return self.lin(x)

    other = nn.Sequential(Recording())
    gcshim.apply(other, layers=Recording, use_reentrant=reentrant)
    out = model(torch.randn(2, 4, requires_grad=True))
    worker = threading.Thread(target=lambda: out.sum().backward())
    worker.start()
    try:
        assert in_recompute.wait(30)
        assert not gcshim.is_recomputing()
        other(torch.randn(2, 4, requires_grad=True)).sum().backward()
    finally:
        release.set()
        worker.join(30)
    assert not worker.is_alive()
    checks = CHECK_RUNS[reentrant]
    assert seen == [True] * checks + [False, True]  # this thread's forward, then its recompute
    assert model[0].lin.weight.grad is not None


def test_is_recomputing_resets_when_the_recompute_raises():
    class FailsOnRecompute(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            if gcshim.is_recomputing():
                raise RuntimeError("boom in recompute")
            return self.lin(x)

    model = nn.Sequential(FailsOnRecompute(), FailsOnRecompute())
    gcshim.apply(model)
    out = model(torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="boom in recompute"):
        out.sum().backward()
    assert not gcshim.is_recomputing()


class KeywordDropoutBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 16)
        self.drop = nn.Dropout(0.3)

    def forward(self, x, *, residual):
        return residual + self.drop(self.lin(x))


def _dropout_grads(device, reentrant):
    torch.manual_seed(3)
    model = nn.ModuleList([KeywordDropoutBlock() for _ in range(3)]).to(device)
    reference = copy.deepcopy(model)

    def run(m):
        torch.manual_seed(11)
        if device.type == "cuda":
            torch.cuda.manual_seed(11)
        x = torch.randn(8, 16, device=device, requires_grad=True)
        out = x
        for block in m:
            out = block(out, residual=out)
        out.pow(2).sum().backward()
        return x.grad

    ref_grad = run(reference)
    gcshim.apply(model, layers=KeywordDropoutBlock, use_reentrant=reentrant)
    grads = {}
    assert_exact_and_recomputed(model, lambda: grads.update(x=run(model)),
                                grads_of(reference))
    torch.testing.assert_close(grads["x"], ref_grad)


def test_dropout_with_tensors_by_keyword_matches_on_cpu(reentrant):
    _dropout_grads(torch.device("cpu"), reentrant)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dropout_with_tensors_by_keyword_matches_on_cuda(reentrant):
    # Reentrant checkpoint stashes device RNG state only for the devices of its positional
    # tensors; gcshim passes keyword tensors positionally, so the CUDA masks replay too.
    _dropout_grads(torch.device("cuda"), reentrant)

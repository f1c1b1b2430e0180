"""Threads applying and removing at once, and long apply/remove runs: no cross-talk between
models of the same classes, no lost or leftover patch, and no growth in patched classes,
gcshim's registries or memory. GCSHIM_STRESS_CYCLES (nox -s stress: 10,000) sets the length."""

import copy
import gc
import os
import threading
import tracemalloc
import weakref

import torch
from torch import nn

import gcshim
from gcshim import _log, api
from gcshim.adapters import registry
from gcshim.core import signature

CYCLES = int(os.environ.get("GCSHIM_STRESS_CYCLES", "1000"))
THREADS = 8


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return torch.tanh(self.lin(x))


class Net(nn.Module):
    def __init__(self, n=4):
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(n))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def _patched(model):
    return [i for i, block in enumerate(model.blocks) if "forward" in vars(block)]


def _grads(model, x):
    model.zero_grad(set_to_none=True)
    model(x).pow(2).sum().backward()
    return [p.grad.clone() for p in model.parameters()]


def test_threads_apply_and_remove_on_models_of_the_same_classes():
    torch.manual_seed(0)
    models = [Net() for _ in range(THREADS)]
    x = torch.randn(4, 8)
    references = [_grads(copy.deepcopy(m), x) for m in models]
    classes = {cls: dict(vars(cls)) for cls in (Block, Net)}  # after deepcopy's __slotnames__
    start = threading.Barrier(THREADS)
    errors = []

    def work(i):
        model, every = models[i], i % 3 + 1
        want = list(range(0, 4, every))  # every n-th block, from the first
        try:
            start.wait()
            for cycle in range(max(CYCLES // 20, 10)):
                handle = gcshim.apply(model, every=every, use_reentrant=bool(i % 2))
                assert _patched(model) == want, (i, cycle, _patched(model))
                if cycle % 5 == 0:
                    for got, ref in zip(_grads(model, x), references[i]):
                        torch.testing.assert_close(got, ref)
                handle.remove()
                assert _patched(model) == [], (i, cycle)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append((i, error))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert {cls: dict(vars(cls)) for cls in (Block, Net)} == classes
    assert all(not gcshim.is_applied(m) and m not in api._handles for m in models)


def _sizes():
    return (len(api._handles), len(_log._seen), signature._method_signature.cache_info().currsize,
            sum(len(v) for v in registry._covering.values()), len(registry._covering))


def test_many_apply_remove_cycles_leave_nothing_behind():
    model = Net()
    classes = {cls: dict(vars(cls)) for cls in (Block, Net)}
    before = {path: dict(vars(m)) for path, m in model.named_modules()}
    x = torch.randn(4, 8)
    for _ in range(50):  # warm every cache first
        gcshim.apply(model).remove()
    _grads(model, x)
    gc.collect()
    sizes = _sizes()
    tracemalloc.start()
    start = tracemalloc.take_snapshot()
    for cycle in range(CYCLES):
        handle = gcshim.apply(model, use_reentrant=bool(cycle % 2))
        handle.remove()
    gc.collect()
    diff = tracemalloc.take_snapshot().compare_to(start, "filename")
    grown = sum(stat.size_diff for stat in diff)
    tracemalloc.stop()
    assert _sizes() == sizes
    assert grown < 64 * 1024, f"{grown} bytes more after {CYCLES} cycles"
    assert {path: dict(vars(m)) for path, m in model.named_modules()} == before
    assert {cls: dict(vars(cls)) for cls in (Block, Net)} == classes
    assert not [o for o in gc.get_objects() if type(o) is gcshim.core.patching.CheckpointedForward]


def test_models_dropped_while_applied_are_collected():
    refs = []
    for _ in range(max(CYCLES // 10, 20)):
        model = Net()
        gcshim.apply(model)
        _grads(model, torch.randn(2, 8))
        refs.append(weakref.ref(model))
        del model
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert len(api._handles) == 0

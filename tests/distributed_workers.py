"""Worker processes for test_distributed (spawned: they must live in an importable module)."""

import os
import warnings

import torch
import torch.distributed as dist
from models import CountsCalls
from torch import nn

import gcshim

WIDTH, BATCH_PER_RANK = 16, 4


class Block(CountsCalls, nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(WIDTH, WIDTH)
        self.b = nn.Linear(WIDTH, WIDTH)
        self.calls = 0

    def forward(self, x, scale):
        self.calls += 1
        return x + self.b(torch.tanh(self.a(x))) * scale


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(3))
        self.scale = nn.Parameter(torch.ones(WIDTH))  # reaches the blocks by keyword
        self.unused = nn.Linear(2, 2)  # what find_unused_parameters=True is for

    def forward(self, x):
        for block in self.blocks:
            x = block(x, scale=self.scale)
        return x


def model():
    torch.manual_seed(0)
    return Net()


def batch():
    torch.manual_seed(1)
    return torch.randn(2 * BATCH_PER_RANK, WIDTH)


def _start(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _finish():
    """Both ranks done, then leave without interpreter teardown: gloo's threads can abort the
    process there ("terminate called without an active exception") after the work is done."""
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


def _shard(x, rank):
    return x[rank * BATCH_PER_RANK:(rank + 1) * BATCH_PER_RANK]


DDP_CASES = [  # (use_reentrant, find_unused_parameters, static_graph)
    (False, False, False), (True, False, False), (False, True, False), (True, True, False),
    (True, True, True),
]


def ddp(rank, world, port, out):
    _start(rank, world, port)
    results = {}
    for case in DDP_CASES:
        reentrant, find_unused, static = case
        net = model()
        if not find_unused:  # with it, DDP would wait forever for the unused gradient
            del net.unused
        gcshim.apply(net, use_reentrant=reentrant)
        wrapped = nn.parallel.DistributedDataParallel(
            net, find_unused_parameters=find_unused, static_graph=static)
        # the first step checks each layer, non-reentrant (gcshim.core.side_channels); the second
        # runs in the mode asked
        wrapped(_shard(batch(), rank)).pow(2).sum().backward()
        net.zero_grad()
        for block in net.blocks:
            block.calls = 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gcshim.reset_notices()
            wrapped(_shard(batch(), rank)).pow(2).sum().backward()
        results[case] = {
            "grads": {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None},
            "recomputed": [block.calls for block in net.blocks],
            "warned": [str(w.message) for w in caught if issubclass(w.category,
                                                                    gcshim.GcshimWarning)],
        }
    if rank == 0:
        torch.save(results, out)
    _finish()


def fsdp2(rank, world, port, out):
    _start(rank, world, port)
    from torch.distributed.fsdp import fully_shard

    try:  # count all-gathers of the sharded units: the recompute must not add any
        from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup
    except ImportError:
        FSDPParamGroup = None
    unshards = [0]
    if FSDPParamGroup is not None:
        real = FSDPParamGroup.unshard

        def counting(self, *args, **kwargs):
            unshards[0] += 1
            return real(self, *args, **kwargs)

        FSDPParamGroup.unshard = counting
    results = {}
    for use_gcshim in (False, True):
        net = model()
        del net.unused  # FSDP2 needs every parameter used
        if use_gcshim:
            gcshim.apply(net)  # before sharding
        for block in net.blocks:
            fully_shard(block)
        fully_shard(net)
        unshards[0] = 0
        loss = net(_shard(batch(), rank)).pow(2).sum()
        loss.backward()
        losses = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(losses, loss.detach())
        results[use_gcshim] = {
            "loss": sum(losses),
            "grads": {n: p.grad.full_tensor() for n, p in net.named_parameters()},
            "recomputed": [block.calls for block in net.blocks],
            "unshards": unshards[0] if FSDPParamGroup is not None else None,
        }
    if rank == 0:
        torch.save(results, out)
    _finish()


def ddp_without_fallback(rank, world, port, out):
    """Reentrant under DDP(find_unused_parameters=True) with gcshim's fallback switched off."""
    from gcshim.core import call as runtime

    runtime._ddp_breaks_reentrant = lambda: False
    _start(rank, world, port)
    net = model()
    gcshim.apply(net, use_reentrant=True)
    wrapped = nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)
    try:
        for _step in range(2):  # the first checks each layer, non-reentrant
            wrapped(_shard(batch(), rank)).pow(2).sum().backward()
        error = None
    except RuntimeError as caught:
        error = str(caught)
    if rank == 0:
        torch.save({"error": error}, out)
    _finish()

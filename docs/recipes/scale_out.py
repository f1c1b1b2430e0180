"""Runnable recipes: gcshim with DDP, FSDP2 and torch.compile (CPU is enough).

    torchrun --standalone --nproc-per-node 2 docs/recipes/scale_out.py ddp
    torchrun --standalone --nproc-per-node 2 docs/recipes/scale_out.py fsdp2
    python docs/recipes/scale_out.py compile [backend]     # default inductor
"""

import sys

import torch
import torch.distributed as dist
from torch import nn

import gcshim


class Block(nn.Module):
    def __init__(self, width=64):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class Model(nn.Module):
    def __init__(self, width=64, depth=4):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def train(model, steps=3):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(1)
    for step in range(steps):
        x, y = torch.randn(32, 64), torch.randn(32, 1)
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(f"step {step} loss {loss.item():.4f}")


def ddp():
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = Model()
    gcshim.apply(model)  # before wrapping
    train(nn.parallel.DistributedDataParallel(model))
    dist.barrier()  # no rank leaves while another still talks to it
    dist.destroy_process_group()


def fsdp2():
    from torch.distributed.fsdp import fully_shard  # torch >= 2.6

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = Model()
    gcshim.apply(model)  # before sharding
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    train(model)
    dist.barrier()
    dist.destroy_process_group()


def compiled():
    torch.manual_seed(0)
    model = Model()
    gcshim.apply(model)
    backend = sys.argv[2] if len(sys.argv) > 2 else "inductor"
    train(torch.compile(model, backend=backend))


if __name__ == "__main__":
    {"ddp": ddp, "fsdp2": fsdp2, "compile": compiled}[sys.argv[1]]()

"""`python -m gcshim demo`: a small built-in transformer trained without and with gcshim."""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import api
from ..budget.memory import peak_bytes
from ..core import table


@dataclass(frozen=True)
class DemoConfig:
    vocab_size: int = 512
    hidden_size: int = 256
    num_heads: int = 4
    num_layers: int = 6
    seq_len: int = 256
    batch_size: int = 8


class Attention(nn.Module):
    def __init__(self, config: DemoConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, seq, width = hidden_states.shape
        q, k, v = self.qkv(hidden_states).split(width, dim=-1)
        q, k, v = (t.view(batch, seq, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(attended.transpose(1, 2).reshape(batch, seq, width))


class Block(nn.Module):
    def __init__(self, config: DemoConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size)
        self.fc = nn.Linear(config.hidden_size, 4 * config.hidden_size)
        self.out = nn.Linear(4 * config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states))
        return hidden_states + self.out(F.gelu(self.fc(self.norm2(hidden_states))))


class TinyTransformer(nn.Module):
    """A GPT-style decoder: embeddings, a ModuleList of blocks, a language-model head."""

    def __init__(self, config: DemoConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position = nn.Embedding(config.seq_len, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.hidden_size)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden_states = self.embed(input_ids) + self.position(positions)
        for block in self.blocks:
            hidden_states = block(hidden_states)
        logits = self.head(self.norm(hidden_states))
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def _train_step(model: nn.Module, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    loss = model(**batch)
    loss.backward()
    return loss.detach()


def _max_grad_diff(model: nn.Module, reference: Dict[str, torch.Tensor]) -> float:
    return max(
        (param.grad - reference[name]).abs().max().item()
        for name, param in model.named_parameters()
    )


def run_demo(
    config: Optional[DemoConfig] = None, steps: int = 5, device: str = "cpu", seed: int = 0
) -> List[Dict[str, Any]]:
    """Train `steps` steps without and with gcshim; one result row per run."""
    config = config or DemoConfig()
    device_ = torch.device(device)
    torch.manual_seed(seed)
    base = TinyTransformer(config).to(device_).train()
    ids = torch.randint(config.vocab_size, (config.batch_size, config.seq_len + 1), device=device_)
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}
    runs = [("no checkpointing", None), ("gcshim", False), ("gcshim reentrant", True)]
    rows: List[Dict[str, Any]] = []
    reference_loss, reference_grads = None, None
    for name, reentrant in runs:
        model = copy.deepcopy(base)
        handle = api.apply(model, use_reentrant=reentrant) if reentrant is not None else None
        losses = []
        peak = peak_bytes(lambda m=model, out=losses: out.append(_train_step(m, batch)), device_)
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        if reference_grads is None:
            reference_loss, reference_grads = losses[0], grads
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            _train_step(model, batch)
            if device_.type == "cuda":
                torch.cuda.synchronize(device_)
            times.append(time.perf_counter() - start)
        rows.append({
            "run": name,
            "layers": len(handle.layers) if handle else 0,
            "peak_bytes": peak,
            "step_s": statistics.median(times),
            "loss_equal": bool(torch.allclose(losses[0], reference_loss, rtol=0, atol=1e-6)),
            "max_grad_diff": _max_grad_diff(model, reference_grads),
        })
        if handle:
            handle.remove()
    return rows


def format_table(rows: List[Dict[str, Any]], config: DemoConfig, device: str) -> str:
    base = rows[0]
    header = ("run", "layers checkpointed", "peak MiB", "peak vs none", "step ms",
              "step vs none", "loss equal", "grads equal (max |diff|)")
    lines = [header]
    for row in rows:
        lines.append((
            row["run"],
            f"{row['layers']}/{config.num_layers}",
            f"{row['peak_bytes'] / 2**20:.1f}",
            f"{row['peak_bytes'] / base['peak_bytes']:.2f}x",
            f"{row['step_s'] * 1e3:.0f}",
            f"{row['step_s'] / base['step_s']:.2f}x",
            "yes" if row["loss_equal"] else "NO",
            ("yes" if row["max_grad_diff"] <= 1e-5 else "NO") + f" ({row['max_grad_diff']:.1e})",
        ))
    out = [
        f"gcshim demo: TinyTransformer, {config.num_layers} layers, hidden {config.hidden_size}, "
        f"batch {config.batch_size} x {config.seq_len}, {device}, torch {torch.__version__}",
        "peak = bytes allocated by one training step on top of the model "
        + ("(CUDA allocator)" if device.startswith("cuda") else "(live-tensor tracker)"),
        *table.format_table(header, lines[1:], separator=" | "),
    ]
    return "\n".join(out)

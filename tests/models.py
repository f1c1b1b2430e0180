"""Small models whose layers take tensors in every way real layers do."""

from __future__ import annotations

import contextlib
import importlib.util
import re
import warnings
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

WIDTH = 16

TORCH = tuple(int(p) for p in torch.__version__.split(".")[:2])
# torch 2.0's dynamo asserts that a module's forward is a function or a bound method, so it
# cannot compile a model whose layers gcshim patched (torch >= 2.1 traces them).
COMPILES_PATCHED_LAYERS = TORCH >= (2, 1)
NO_COMPILE_REASON = (f"torch {torch.__version__}'s dynamo cannot compile gcshim-patched layers "
                     "(AssertionError: a module's forward must be a function or method)")
# Before 2.5, dynamo cannot trace gcshim's checkpoint call into the graph: each checkpointed
# layer is a graph break and checkpoints eagerly in between (same memory and gradients).
COMPILES_IN_ONE_GRAPH = TORCH >= (2, 5)



def fsdp2_missing() -> Optional[str]:
    """Why FSDP2 cannot shard over CPU (gloo) ranks with this torch; None where it can."""
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no torch.distributed.fsdp.fully_shard (FSDP2)"
    if not hasattr(torch.cpu.Stream, "record_event"):  # FSDP2 records events on its streams
        return f"torch {torch.__version__}'s FSDP2 cannot run on CPU (no Stream.record_event)"
    return None


# torch 2.4's own checkpoint recompute enters the deprecated torch.cpu.amp.autocast: a
# FutureWarning every torch.utils.checkpoint user gets there, not one gcshim adds.
TORCHS_OWN_WARNINGS = (r"`torch\.cpu\.amp\.autocast\(args\.\.\.\)` is deprecated",)


@contextlib.contextmanager
def warnings_as_errors() -> Iterator[None]:
    """Every warning raises, but those torch gives any checkpoint user."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for message in TORCHS_OWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


def not_torchs_own(caught: List[warnings.WarningMessage]) -> List[str]:
    """The messages of recorded warnings, less those torch gives any checkpoint user."""
    return [str(w.message) for w in caught
            if not any(re.search(m, str(w.message)) for m in TORCHS_OWN_WARNINGS)]


# Extra forward runs of each layer in its first checkpointed step: with use_reentrant=True
# gcshim runs the forward once without grad, to compare it with the forward with grad.
CHECK_RUNS = {False: 0, True: 1}

# adapter rows gated on transformers hold only where it is installed (nox -s torch_only)
needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="transformers is not installed")

_COUNTS: Dict[Tuple[int, str], int] = {}


def _counter(name: str) -> property:
    """A per-instance count kept outside the module: gcshim puts a layer's own attributes back
    as its forward left them after the recompute (the recompute changes nothing visible), so a
    count on the instance would not show the recompute."""

    def get(self: nn.Module) -> int:
        return _COUNTS.get((id(self), name), 0)

    def put(self: nn.Module, value: int) -> None:
        _COUNTS[(id(self), name)] = value

    return property(get, put)


class CountsCalls:
    """Mixin: `calls` (and `first_calls`) counted outside the instance."""

    calls = _counter("calls")
    first_calls = _counter("first_calls")


class Block(CountsCalls, nn.Module):
    """The tests' plain block: a residual tanh(Linear), counting its forward calls."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x + torch.tanh(self.lin(x))


def stack(depth: int = 3, width: int = 8) -> nn.Sequential:
    """`depth` Blocks in a Sequential: the repeated blocks auto discovery finds."""
    return nn.Sequential(*[Block(width) for _ in range(depth)])


class RopeLikeBlock(CountsCalls, nn.Module):
    """A layer taking a keyword tensor, a nested (cos, sin) tuple and a dict of tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(WIDTH, WIDTH)
        self.second = nn.Linear(WIDTH, WIDTH)
        self.first_calls = 0
        self.first.register_forward_hook(self._count)

    def _count(self, *_: object) -> None:
        self.first_calls += 1

    def forward(
        self,
        hidden_states: torch.Tensor,
        scale: Optional[torch.Tensor] = None,
        position_embeddings: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        extras: Optional[Dict[str, torch.Tensor]] = None,
    ) -> torch.Tensor:
        h = torch.tanh(self.first(hidden_states))
        if scale is not None:
            h = h * scale
        if position_embeddings is not None:
            cos, sin = position_embeddings
            h = h * cos + torch.roll(h, 1, dims=-1) * sin
        if extras is not None:
            h = h + extras["bias"]
        return hidden_states + self.second(F.gelu(h))


class RopeLikeModel(nn.Module):
    def __init__(self, layers: int = 3, vocab: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, WIDTH)
        self.layers = nn.ModuleList(RopeLikeBlock() for _ in range(layers))
        self.head = nn.Linear(WIDTH, 1)
        self.scale = nn.Parameter(torch.ones(WIDTH))
        self.rope = nn.Parameter(torch.randn(2, WIDTH) * 0.1)
        self.bias = nn.Parameter(torch.zeros(WIDTH))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        cos, sin = self.rope[0].cos(), self.rope[1].sin()
        for layer in self.layers:
            h = layer(h, scale=self.scale, position_embeddings=(cos, sin),
                      extras={"bias": self.bias})
        return self.head(h).pow(2).mean()


class PastKeyValueBlock(nn.Module):
    """4.44-Llama-like: (h, [attn], [cache]) with the cache appended when use_cache."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(WIDTH, WIDTH)
        self.seen = []

    def forward(self, hidden_states, attention_mask=None, past_key_value=None,
                output_attentions=False, use_cache=False):
        self.seen.append((past_key_value, use_cache))
        if past_key_value is not None:
            past_key_value.append(hidden_states.detach())  # a cache updated in place
        out = (hidden_states + torch.relu(self.proj(hidden_states)),)
        if output_attentions:
            out += (torch.zeros(1),)
        if use_cache:
            out += (past_key_value,)
        return out


class LayerPastBlock(nn.Module):
    """GPT2-4.44-like: (h, present, [attn]) with the present at index 1 when use_cache."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(WIDTH, WIDTH)

    def forward(self, hidden_states, layer_past=None, attention_mask=None, use_cache=False,
                output_attentions=False):
        h = hidden_states + torch.relu(self.proj(hidden_states))
        present = (h.detach(), h.detach()) if use_cache else None
        out = (h, present) if use_cache else (h,)
        if output_attentions:
            out += (torch.zeros(1),)
        return out


class CacheCallerModel(nn.Module):
    """A stack that asks its layers for caches and indexes the cache slot of their outputs."""

    def __init__(self, block: type, layers: int = 2, positional: bool = False,
                 filled: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(block() for _ in range(layers))
        self.positional = positional
        self.filled = filled  # pass caches holding a past (generation, a prefix), not empty
        self.head = nn.Linear(WIDTH, 1)

    def forward(self, h, output_attentions=False):
        caches = []
        for layer in self.layers:
            cache = [torch.zeros(1, WIDTH)] if self.filled else []
            if isinstance(layer, LayerPastBlock):
                past = (torch.zeros(1, WIDTH),) * 2 if self.filled else None
                if self.positional:
                    out = layer(h, past, None, True, output_attentions)
                else:
                    out = layer(h, layer_past=past, use_cache=True,
                                output_attentions=output_attentions)
                caches.append(out[1])
            else:
                if self.positional:
                    out = layer(h, None, cache, output_attentions, True)
                else:
                    out = layer(h, past_key_value=cache, output_attentions=output_attentions,
                                use_cache=True)
                caches.append(out[2 if output_attentions else 1])
            h = out[0]
        return self.head(h).sum(), caches


_TRANSFORMERS_TWINS: Dict[type, type] = {}


def as_transformers_code(model: nn.Module) -> nn.Module:
    """Make every module of `model` look defined inside transformers (gcshim leaves layers to
    transformers' own checkpointing only where layer and stack are transformers' own code)."""
    for module in model.modules():
        cls = type(module)
        if cls.__module__.startswith("transformers.") or cls.__module__.startswith("torch."):
            continue
        if cls not in _TRANSFORMERS_TWINS:
            twin = type(cls.__name__, (cls,), {"__module__": "transformers.models.fake.modeling"})
            _TRANSFORMERS_TWINS[cls] = twin
        module.__class__ = _TRANSFORMERS_TWINS[cls]
    return model


def grads_of(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {
        name: p.grad.detach().clone()
        for name, p in model.named_parameters()
        if p.grad is not None
    }


@contextlib.contextmanager
def recomputed_modules() -> Iterator[set]:
    """The ids of the modules that ran forward inside a gcshim recompute while the block ran
    (the sub-modules of the layers backward recomputed)."""
    import gcshim

    seen: set = set()

    def note(module: nn.Module, _args: object) -> None:
        if gcshim.is_recomputing():
            seen.add(id(module))

    hook = nn.modules.module.register_module_forward_pre_hook(note)
    try:
        yield seen
    finally:
        hook.remove()


@contextlib.contextmanager
def table_without(unwanted: Callable[[object], bool]) -> Iterator[None]:
    """The adapter table with the rows `unwanted` picks taken out, in order otherwise (to show
    what those rows prevent); the table as it was afterwards."""
    from gcshim.adapters import registry

    saved = list(registry._BUILTIN)
    registry._BUILTIN[:] = [row for row in saved if not unwanted(row)]
    assert len(registry._BUILTIN) < len(saved), "no row to take out"
    registry._covering.clear()  # the lookup cache knows the table as it was
    try:
        yield
    finally:
        registry._BUILTIN[:] = saved
        registry._covering.clear()


def assert_exact_and_recomputed(model: nn.Module, step: Callable[[], object],
                                reference: Dict[str, torch.Tensor], atol: float = 1e-5,
                                rtol: float = 1e-5) -> None:
    """One training `step()` of a gcshim-applied `model`: gcshim patched layers, each of them
    recomputed in backward (its sub-modules ran again), and every gradient equals `reference`
    (grads_of the un-checkpointed model after the same step). A gradient test that would pass
    with nothing patched is not a test of gcshim."""
    from gcshim.core.patching import iter_patched

    patched = [(path, module) for path, module, _wrapper in iter_patched(model)]
    assert patched, "gcshim patched nothing"
    with recomputed_modules() as seen:
        step()
    not_recomputed = [path for path, module in patched
                      if not any(id(inner) in seen for inner in module.modules())]
    assert not not_recomputed, f"not recomputed in backward: {not_recomputed}"
    assert_same_grads(reference, model, atol=atol, rtol=rtol)


def assert_same_grads(reference: Dict[str, torch.Tensor], model: nn.Module,
                      atol: float = 1e-5, rtol: float = 1e-5) -> None:
    got = grads_of(model)
    assert got.keys() == reference.keys(), (sorted(reference), sorted(got))
    for name, grad in reference.items():
        torch.testing.assert_close(got[name], grad, rtol=rtol, atol=atol, msg=name)


class Mlp(nn.Module):
    """A residual MLP block: activation memory that checkpointing visibly saves."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)))

"""Measuring training steps for the planner: peak memory, step time, and per-layer costs.

Every measurement runs inside `sandboxed(model)`, which puts back the parameters' gradients,
the buffers (BatchNorm statistics) and the RNG state afterwards: planning does not change the
model or the random stream of the training that follows.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Sequence, Set, Tuple, Union

import torch
from torch import nn

from ..core import tree
from .memory import peak_bytes

ExampleInputs = Union[Tuple[Any, ...], Dict[str, Any], torch.Tensor, Callable[[], Any]]


def loss_of(output: Any) -> torch.Tensor:
    """The output's `.loss` if it has one, else the sum of its floating-point tensors."""
    loss = getattr(output, "loss", None)
    if isinstance(loss, torch.Tensor) and loss.requires_grad:
        return loss.float().sum()
    tensors = [t for t in tree.flatten(output)[0] if t.is_floating_point() and t.requires_grad]
    if not tensors:
        raise ValueError(
            "example_inputs: the model's output has no floating-point tensor that requires "
            "grad, so there is nothing to backpropagate; pass a callable that runs forward "
            "and backward itself"
        )
    return sum(t.float().sum() for t in tensors)


def training_step(model: nn.Module, example_inputs: ExampleInputs) -> Callable[[], None]:
    """One forward and backward on `example_inputs`, as a callable."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, tuple):
        positional = example_inputs
        return lambda: loss_of(model(*positional)).backward()
    if isinstance(example_inputs, dict):
        keywords = example_inputs
        return lambda: loss_of(model(**keywords)).backward()
    if callable(example_inputs):
        run = example_inputs

        def step() -> None:
            run()

        return step
    raise TypeError(
        "example_inputs must be a tuple of positional arguments, a dict of keyword arguments, "
        f"a tensor, or a callable that runs forward and backward; got "
        f"{type(example_inputs).__name__}"
    )


def device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def sandboxed(model: nn.Module) -> Iterator[None]:
    """Gradients, buffers and RNG state are as before when the block ends."""
    grads = [(p, p.grad) for p in model.parameters()]
    buffers = [(owner, name, b, b.detach().clone()) for owner in model.modules()
               for name, b in owner._buffers.items() if b is not None]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        for p, grad in grads:
            p.grad = grad
        with torch.no_grad():
            for owner, name, buffer, value in buffers:
                owner._buffers[name] = buffer  # a step may have reassigned it
                buffer.copy_(value)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def _clear_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


@dataclass(frozen=True)
class StepCost:
    peak_bytes: int
    step_seconds: float


def measure_step(model: nn.Module, step: Callable[[], None], repeats: int = 3) -> StepCost:
    """Peak bytes a step allocates (gradients included) and its median time."""
    device = device_of(model)

    def fresh_step() -> None:
        _clear_grads(model)
        step()

    with sandboxed(model):
        if device.type == "cuda":
            fresh_step()  # warm-up: cuBLAS workspaces and the like are allocated once
        peak = peak_bytes(fresh_step, device)
        times = []
        for _ in range(repeats):
            _clear_grads(model)
            _synchronize(device)
            start = time.perf_counter()
            step()
            _synchronize(device)
            times.append(time.perf_counter() - start)
    return StepCost(peak, statistics.median(times))


@dataclass(frozen=True)
class LayerCost:
    """What checkpointing one layer saves (activation bytes) and costs (one more forward)."""

    path: str
    layer: str
    saved_bytes: int
    forward_seconds: float


def _storage_key(tensor: torch.Tensor) -> Any:
    try:
        storage = tensor.untyped_storage()
        return storage._cdata, storage.nbytes()
    except (RuntimeError, NotImplementedError):  # tensors without a plain storage
        return None


def layer_costs(model: nn.Module, layers: Sequence[Tuple[str, nn.Module]],
                step: Callable[[], None]) -> List[LayerCost]:
    """Per layer: the bytes autograd saves inside it (not its inputs, not parameters) and its
    forward time, from an un-checkpointed step (the second of two; the first warms up)."""
    device = device_of(model)
    index = {id(module): i for i, (_path, module) in enumerate(layers)}
    resident: Set[Any] = {_storage_key(t) for t in [*model.parameters(), *model.buffers()]}
    active: List[Tuple[int, Set[Any], float]] = []
    saved: List[Dict[Any, int]] = [{} for _ in layers]
    seconds = [0.0] * len(layers)

    def before(module: nn.Module, args: Any, kwargs: Any) -> None:
        inputs = {_storage_key(t) for t in tree.flatten((args, kwargs))[0]}
        _synchronize(device)
        active.append((index[id(module)], inputs, time.perf_counter()))

    def after(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        _synchronize(device)
        i, _inputs, start = active.pop()
        seconds[i] += time.perf_counter() - start

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if active:
            i, inputs, _start = active[-1]
            key = _storage_key(tensor)
            if key is not None and key not in inputs and key not in resident:
                saved[i][key[0]] = key[1]
        return tensor

    hooks = []
    try:
        for _path, module in layers:
            hooks.append(module.register_forward_pre_hook(before, with_kwargs=True))
            hooks.append(module.register_forward_hook(after, with_kwargs=True))
        with sandboxed(model):
            _clear_grads(model)
            step()  # warm-up: first-call allocations and lazy initialisation
            for per_layer in saved:
                per_layer.clear()
            seconds[:] = [0.0] * len(layers)
            _clear_grads(model)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                step()
    finally:
        for hook in hooks:
            hook.remove()
    return [
        LayerCost(path, type(module).__name__, sum(saved[i].values()), seconds[i])
        for i, (path, module) in enumerate(layers)
    ]

"""Peak memory of one piece of work: the CUDA allocator, or a live-tensor tracker on CPU.

Both report the bytes allocated on top of what was allocated before the work started.
The CPU tracker is a TorchDispatchMode that counts the bytes of live tensor storages created
inside it (backward included); it is deterministic, unlike the process RSS.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, Tuple, Union

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode


def _tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)


class LiveTensorTracker(TorchDispatchMode):
    """Tracks the bytes of storages created inside the mode that are still alive, and the peak."""

    def __init__(self) -> None:
        super().__init__()
        self._live: Dict[int, Tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _prune(self) -> None:
        for key, (ref, nbytes) in list(self._live.items()):
            if ref.expired():
                del self._live[key]
                self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        self._prune()
        # Views and in-place results share an input's storage: nothing new was allocated.
        given = [args, list((kwargs or {}).values())]
        inputs = {t.untyped_storage()._cdata for t in _tensors(given)}
        for tensor in _tensors(output):
            if tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key in inputs:
                continue
            known = self._live.get(key)
            if known is not None and not known[0].expired():
                continue
            nbytes = storage.nbytes()
            self._live[key] = (StorageWeakRef(storage), nbytes)
            self.current += nbytes
        self.peak = max(self.peak, self.current)
        return output


def peak_bytes(work: Callable[[], Any], device: torch.device) -> int:
    """Bytes allocated at the peak of `work()` on top of what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        work()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with LiveTensorTracker() as tracker:
        work()
    return tracker.peak


# -- byte sizes as people write them ------------------------------------------------------
_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*")


def parse_bytes(value: Union[int, float, str]) -> int:
    """Bytes from an int, or a string such as "12GiB", "1.5 GB", "800MiB", "4096"."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"budget must be bytes (int) or a string like '12GiB', got "
                        f"{type(value).__name__}")
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS and unit != "":
            raise ValueError(f"budget {value!r} is not a size; write it like '12GiB', "
                             f"'1.5GB' or '800MiB' (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
        value = float(match.group(1)) * _UNITS[unit or "b"]
    if value != value or value in (float("inf"), float("-inf")) or value <= 0:
        raise ValueError(f"budget must be a positive size, got {value!r}")
    return int(value)


def format_bytes(count: float) -> str:
    """1536 -> '1.50 KiB'; for plans and reports."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} GiB"

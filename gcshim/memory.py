"""Peak memory of one piece of work: the CUDA allocator, or a live-tensor tracker on CPU.

Both report the bytes allocated on top of what was allocated before the work started.
The CPU tracker is a TorchDispatchMode that counts the bytes of live tensor storages created
inside it (backward included); it is deterministic, unlike the process RSS.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

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

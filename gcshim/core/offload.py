"""Offloading checkpoint inputs to pinned CPU memory while the device waits for backward.

A checkpointed layer keeps only its inputs on the device; with offload those go to pinned host
memory too, copied on a side CUDA stream so the copy overlaps the next layers' compute, and come
back (ordered after the copy out) when backward recomputes the layer. Tensors under
`min_bytes`, non-contiguous ones and non-CUDA ones stay where they are. The last checkpointed
layer does not offload: backward needs its inputs first.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator

import torch

MIN_BYTES = 1 << 20  # smaller tensors cost more in copy latency than they free


class _OnHost:
    __slots__ = ("host", "device", "ready")

    def __init__(self, host: torch.Tensor, device: torch.device, ready: Any) -> None:
        self.host = host
        self.device = device
        self.ready = ready


class Offloader:
    """The saved-tensor hooks one `apply(offload=True)` uses (one side stream per device)."""

    def __init__(self, min_bytes: int = MIN_BYTES) -> None:
        self.min_bytes = min_bytes
        self._streams: Dict[torch.device, Any] = {}

    def worth_moving(self, tensor: torch.Tensor) -> bool:
        return (tensor.device.type == "cuda" and tensor.is_contiguous()
                and tensor.numel() * tensor.element_size() >= self.min_bytes)

    def _side_stream(self, device: torch.device) -> Any:
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device)
        return stream

    def send(self, tensor: torch.Tensor) -> Any:
        """Start the copy to pinned host memory on the side stream."""
        device = tensor.device
        stream = self._side_stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))  # the tensor is fully written
        with torch.cuda.stream(stream):
            host = torch.empty(tensor.size(), dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(stream)
        tensor.record_stream(stream)  # the allocator keeps it until the copy is done
        return _OnHost(host, device, ready)

    def fetch(self, packed: _OnHost) -> torch.Tensor:
        """Bring a tensor back, ordered after its copy out."""
        torch.cuda.current_stream(packed.device).wait_event(packed.ready)
        return packed.host.to(packed.device, non_blocking=True)

    def _pack(self, tensor: torch.Tensor) -> Any:
        return self.send(tensor) if self.worth_moving(tensor) else tensor

    def _unpack(self, packed: Any) -> torch.Tensor:
        return self.fetch(packed) if isinstance(packed, _OnHost) else packed

    @contextlib.contextmanager
    def moving_saved_inputs(self) -> Iterator[None]:
        """Around a checkpoint call: what it saves for backward (its inputs) is offloaded."""
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            yield

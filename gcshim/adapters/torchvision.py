"""Rows for torchvision model blocks (torchvision is never imported here)."""

from .row import Adapter

ROWS = [
    Adapter(
        name="torchvision ResNet / ViT block",
        classes=("BasicBlock", "Bottleneck", "EncoderBlock"),
        module_prefix="torchvision.",
        cache_args=(),
        cache_flag=None,
        grad_args=("x", "input"),
        notes="ResNet blocks hold BatchNorm: see the policies for running statistics",
    ),
]

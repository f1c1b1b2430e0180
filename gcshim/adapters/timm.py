"""Rows for timm blocks (timm is never imported here)."""

from .row import Adapter

ROWS = [
    Adapter(
        name="timm transformer / ConvNeXt / ResNet block",
        classes=("Block", "ConvNeXtBlock", "BasicBlock", "Bottleneck", "ResPostBlock",
                 "ParallelScalingBlock"),
        module_prefix="timm.",
        cache_args=(),
        cache_flag=None,
        grad_args=("x",),
        notes="ResNet blocks hold BatchNorm: see the policies for running statistics",
    ),
]

"""Rows for torch.nn's own transformer layers."""

from .row import Adapter

ROWS = [
    Adapter(
        name="torch.nn.Transformer{Encoder,Decoder}Layer",
        classes=("TransformerEncoderLayer", "TransformerDecoderLayer"),
        module_prefix="torch.nn.",
        cache_args=(),
        cache_flag=None,
        notes="masks arrive by keyword from nn.TransformerEncoder/Decoder; no cache",
    ),
]

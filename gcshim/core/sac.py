"""Ready-made selective activation checkpointing (SAC) policies, for `apply(context_fn=...)`.

Inside a checkpointed layer, the outputs of the named ops are kept from the forward instead of
recomputed; everything else is recomputed. torch >= 2.5 has the public API this builds on
(``torch.utils.checkpoint.create_selective_checkpoint_contexts``); on older torch these raise
UnsupportedOptionError. Non-reentrant mode only, like ``context_fn`` itself.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, List, Tuple

import torch
import torch.utils.checkpoint as _torch_checkpoint

from ..errors import UnsupportedOptionError

ContextFn = Callable[[], Tuple[Any, Any]]

_MATMULS = ("mm", "bmm", "addmm", "baddbmm", "_scaled_mm")
_ATTENTION = (
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_flash_attention_forward",
    "_efficient_attention_forward",
)


def _overloads(op: Any) -> List[Any]:
    """Every overload of an op packet (``aten.mm``); an overload (``aten.mm.default``) as is.

    SAC compares against overloads; a packet would silently never match.
    """
    if isinstance(op, torch._ops.OpOverloadPacket):
        return [getattr(op, name) for name in op.overloads()]
    if isinstance(op, torch._ops.OpOverload):
        return [op]
    raise TypeError(f"save_ops takes torch ops such as torch.ops.aten.mm, got {op!r}")


def save_ops(*ops: Any) -> ContextFn:
    """A `context_fn` that keeps the outputs of `ops` and recomputes the rest."""
    create = getattr(_torch_checkpoint, "create_selective_checkpoint_contexts", None)
    if create is None:
        raise UnsupportedOptionError(
            f"selective checkpointing needs torch>=2.5; the installed torch {torch.__version__} "
            "does not have create_selective_checkpoint_contexts"
        )
    if not ops:
        raise ValueError("save_ops needs at least one op to save")
    saved = [overload for op in ops for overload in _overloads(op)]
    return functools.partial(create, saved)


def _aten_ops(names: Tuple[str, ...]) -> List[Any]:
    # Which attention kernels exist depends on the torch release and build.
    return [getattr(torch.ops.aten, name) for name in names if hasattr(torch.ops.aten, name)]


def save_matmuls(attention: bool = True) -> ContextFn:
    """Keep matrix-multiply outputs (and, by default, attention kernel outputs); recompute
    the cheap elementwise work between them."""
    names = _MATMULS + (_ATTENTION if attention else ())
    return save_ops(*_aten_ops(names))

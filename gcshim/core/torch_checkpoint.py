"""The one place that talks to `torch.utils.checkpoint.checkpoint`.

What the installed torch accepts is read from the function's signature (feature detection),
so the rest of gcshim never branches on the torch version:

- 2.0: ``checkpoint(fn, *args, use_reentrant=True, **kwargs)``, ``preserve_rng_state`` in kwargs;
- 2.1+: ``context_fn``, ``determinism_check``, ``debug``; 2.9+: ``early_stop``;
- 2.14+: ``respect_saved_tensors_hooks`` and ``preserve_rng_state`` as real keywords.

gcshim passes only tensors positionally to ``checkpoint`` (see ``gcshim.tree``), so layer
keyword arguments never collide with checkpoint's own keywords, and device RNG state is stashed
for every tensor, including those the caller passed by keyword.
"""

from __future__ import annotations

import functools
import inspect
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import torch
import torch.utils.checkpoint as _torch_checkpoint

from ..errors import UnsupportedOptionError


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_optional_bool(value: Any) -> bool:
    return value is None or isinstance(value, bool)


def _is_determinism_check(value: Any) -> bool:
    return value in ("default", "none")


# option -> (validator, what it must be, first torch release that has it, non-reentrant only)
_OPTION_RULES: Dict[str, Tuple[Callable[[Any], bool], str, str, bool]] = {
    "use_reentrant": (_is_bool, "a bool", "2.0", False),
    "preserve_rng_state": (_is_bool, "a bool", "2.0", False),
    "context_fn": (callable, "a callable returning two context managers", "2.1", True),
    "determinism_check": (_is_determinism_check, "'default' or 'none'", "2.1", True),
    "debug": (_is_bool, "a bool", "2.1", True),
    "early_stop": (_is_bool, "a bool", "2.9", False),
    "respect_saved_tensors_hooks": (_is_optional_bool, "a bool or None", "2.14", False),
}

# 2.0 pops preserve_rng_state out of **kwargs: it is always accepted.
_ALWAYS = frozenset({"use_reentrant", "preserve_rng_state"})


def supported_options() -> FrozenSet[str]:
    """The checkpoint options the installed torch accepts."""
    params = inspect.signature(_torch_checkpoint.checkpoint).parameters
    return _ALWAYS | frozenset(name for name in _OPTION_RULES if name in params)


@dataclass(frozen=True)
class CheckpointOptions:
    """Validated options for every checkpoint call of one `apply`."""

    use_reentrant: bool = False
    preserve_rng_state: bool = True
    extra: Tuple[Tuple[str, Any], ...] = ()
    # gcshim's, not torch's: raise where a layer cannot be checkpointed exactly in this mode,
    # rather than checkpoint it non-reentrant
    strict: bool = False

    @property
    def mode(self) -> str:
        return "reentrant" if self.use_reentrant else "non-reentrant"

    def __post_init__(self) -> None:
        # Built once: checkpoint() runs on every layer call. (Not a cached_property: its lock is
        # a graph break under torch.compile.)
        object.__setattr__(self, "_kwargs", self.as_kwargs())

    def as_kwargs(self) -> Dict[str, Any]:
        kwargs = {
            "use_reentrant": self.use_reentrant,
            "preserve_rng_state": self.preserve_rng_state,
        }
        kwargs.update(self.extra)
        return kwargs


def make_options(
    use_reentrant: bool = False, preserve_rng_state: bool = True, strict: bool = False,
    **extra: Any
) -> CheckpointOptions:
    """Check options against the installed torch; raise a clear error for anything off."""
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {strict!r}")
    given = dict(extra, use_reentrant=use_reentrant, preserve_rng_state=preserve_rng_state)
    available = supported_options()
    for name, value in given.items():
        if name not in _OPTION_RULES:
            known = ", ".join(sorted(_OPTION_RULES))
            raise TypeError(f"unknown checkpoint option {name!r}; gcshim knows: {known}")
        valid, expected, since, non_reentrant_only = _OPTION_RULES[name]
        if name not in available:
            raise UnsupportedOptionError(
                f"checkpoint option {name!r} needs torch>={since}; "
                f"the installed torch {torch.__version__} does not have it"
            )
        if not valid(value):
            raise TypeError(f"checkpoint option {name!r} must be {expected}, got {value!r}")
        if use_reentrant and non_reentrant_only:
            raise ValueError(
                f"checkpoint option {name!r} works only with use_reentrant=False"
            )
    return CheckpointOptions(
        use_reentrant=use_reentrant,
        preserve_rng_state=preserve_rng_state,
        extra=tuple(sorted(extra.items())),
        strict=strict,
    )


def non_reentrant_saves_inputs() -> bool:
    """Whether non-reentrant checkpoint keeps the layer's inputs as saved tensors (torch 2.1+),
    where saved-tensor hooks such as offload's see them; 2.0 holds them in a closure."""
    return hasattr(_torch_checkpoint, "_checkpoint_without_reentrant_generator")


def _find_is_compiling() -> Callable[[], bool]:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):  # torch >= 2.3
        return compiler.is_compiling

    def dynamo_is_compiling() -> bool:  # torch < 2.3: dynamo's, once something imported it
        dynamo = sys.modules.get("torch._dynamo")
        return bool(dynamo is not None and dynamo.is_compiling())

    return dynamo_is_compiling


# Whether torch.compile (dynamo) is tracing this call; looked up once (it runs on every call).
is_compiling = _find_is_compiling()


def inside_other_checkpoint() -> bool:
    """Whether this layer call already runs under a checkpoint gcshim did not make (a stack that
    calls torch.utils.checkpoint itself): in a non-reentrant checkpoint's forward (its
    saved-tensor hooks are on top) or in any recompute during backward. Checkpointing the layer
    again there would only recompute it twice."""
    if current_graph_task_id() != -1:
        return True
    hooks = top_saved_tensors_hooks()
    return hooks is not None and checkpoint_hooks_on_top(hooks)


def checkpoint_hooks_on_top(hooks: Tuple[Any, Any]) -> bool:
    """Whether the innermost saved-tensor hooks (`top_saved_tensors_hooks()`, not None) are a
    non-reentrant checkpoint's (gcshim's own checkpoints are torch's too)."""
    return getattr(hooks[0], "__module__", None) == _CHECKPOINT_MODULE


# torch internals read by inside_other_checkpoint (feature-detected: absent means "not seen"),
# C-level where torch has them: the call path calls them on every layer call
def _no_graph_task() -> int:
    return -1


# -1 outside backward; the id of the backward running otherwise
current_graph_task_id: Callable[[], int] = getattr(torch._C, "_current_graph_task_id",
                                                   _no_graph_task)
_CHECKPOINT_MODULE = _torch_checkpoint.__name__


def _find_top_hooks() -> Callable[[], Any]:
    """The innermost saved-tensor hooks pair (or None), asked the way this torch takes it:
    recent releases want `ignore_is_tracing`, older ones no argument."""
    top = getattr(getattr(torch._C, "_autograd", None), "_top_saved_tensors_default_hooks",
                  None)
    if top is None:
        return lambda: None
    try:
        top(False)
    except TypeError:
        return top
    return functools.partial(top, False)  # C-level: no Python frame on every layer call


top_saved_tensors_hooks = _find_top_hooks()


# torch's internal exceptions that steer the recompute (non-reentrant early stop, 2.1+): they
# pass through a layer's recompute and must reach torch untouched
CONTROL_FLOW: Tuple[type, ...] = tuple(
    error for error in (getattr(_torch_checkpoint, "_StopRecomputationError", None),)
    if isinstance(error, type))


def checkpoint(
    function: Callable[..., Any], inputs: Sequence[torch.Tensor], options: CheckpointOptions,
    compiling: bool = False,
) -> Any:
    """Run `function(*inputs)` under torch's checkpoint with `options` (use_reentrant explicit)."""
    if compiling:  # traced: the compiler owns the error path
        return _torch_checkpoint.checkpoint(function, *inputs, **options._kwargs)
    try:
        return _torch_checkpoint.checkpoint(function, *inputs, **options._kwargs)
    except BaseException as error:
        _close_checkpoint_frames(error.__traceback__)
        raise


def unused_outputs(outputs: Sequence[Any]) -> Optional[List[int]]:
    """Where a reentrant checkpoint's outputs will have gone unused, known before its recompute.

    Reentrant checkpoint hands the recompute a zero gradient for every output the caller did
    not use, so parameters that feed only those outputs get zeros where the plain step leaves
    them None (and an optimizer then decays and moves them). A hook on the checkpoint's node
    sees the gradients before they are made zeros: the returned list is filled there with the
    positions that got none, for the recompute to detach. None: nothing can go unused (one
    output that requires grad: unused, its node never runs), or this torch has no such hook.
    """
    needing = [t for t in outputs if isinstance(t, torch.Tensor) and t.requires_grad]
    if len(needing) < 2 or not hasattr(needing[0].grad_fn, "register_prehook"):
        return None
    unused: List[int] = []

    def note(grad_outputs: Tuple[Optional[torch.Tensor], ...]) -> None:
        unused[:] = [i for i, grad in enumerate(grad_outputs) if grad is None]

    needing[0].grad_fn.register_prehook(note)
    return unused


def _close_checkpoint_frames(tb: Any) -> None:
    """Let go of torch's checkpoint frames in a raised error's traceback.

    Where torch does not close it itself (2.1 and 2.6 do not, 2.13 does), non-reentrant
    checkpoint leaves its generator suspended inside its saved-tensor hooks when the layer
    raises; the traceback keeps it alive, and while it lives every later checkpoint sees the
    stale hooks ("A different number of tensors was saved"). Clearing those finished frames
    closes the generator, which takes its hooks off.
    """
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_filename == _torch_checkpoint.__file__:
            try:
                frame.clear()
            except RuntimeError:  # still running (not one of torch's finished frames)
                pass
        tb = tb.tb_next

"""The public API: apply, remove, applied, report, and the Handle that apply returns."""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ._log import logger, notice_once
from .adapters import find_adapter
from .budget.measure import ExampleInputs, training_step
from .budget.memory import parse_bytes
from .budget.planner import Plan, make_plan
from .core import hooks, policy
from .core import patching as _patch
from .core.offload import Offloader
from .core.report import LayerReport, Report
from .core.selection import Selection, ancestor_classes, select
from .core.spec import LayerSpec
from .core.torch_checkpoint import CheckpointOptions, make_options, non_reentrant_saves_inputs
from .core.undo import UndoLog
from .errors import UnsupportedOptionError, annotate

# root model -> the Handle of the apply that patched it (weak: never keeps a model alive)
_handles: weakref.WeakKeyDictionary[nn.Module, Handle] = weakref.WeakKeyDictionary()
_lock = threading.RLock()


class Handle:
    """What `apply` did to one model; `remove()` undoes exactly that (its undo log)."""

    def __init__(
        self,
        model: nn.Module,
        patched: List[Tuple[str, nn.Module, _patch.CheckpointedForward]],
        skipped: List[Tuple[str, nn.Module, str]],
        source: str,
        undo: UndoLog,
    ) -> None:
        self._model_ref = weakref.ref(model)
        self._model_name = type(model).__name__
        # weakly: a Handle never keeps a model alive
        self._patched = [(path, weakref.ref(module), wrapper) for path, module, wrapper in patched]
        self._skipped = [(path, type(module).__name__, why) for path, module, why in skipped]
        self.source = source
        self._undo = undo
        # the budget plan that chose the layers (apply(budget=...)), else None
        self.plan: Optional[Plan] = None

    @property
    def model(self) -> Optional[nn.Module]:
        return self._model_ref()

    def _live(self) -> Iterator[Tuple[str, nn.Module, _patch.CheckpointedForward]]:
        """(path, layer, wrapper) for the layers this handle still has checkpointed."""
        for path, ref, wrapper in self._patched:
            module = ref()
            if module is not None and _patch.patched_forward(module) is wrapper:
                yield path, module, wrapper

    @property
    def layers(self) -> List[str]:
        """Paths of the layers this handle still has checkpointed."""
        return [path for path, _module, _wrapper in self._live()]

    @property
    def active(self) -> bool:
        return bool(self.layers)

    def remove(self) -> None:
        """Restore every layer this handle patched; harmless when called again. Raises
        PatchedOverError, removing nothing, where another tool has wrapped gcshim's forward."""
        with _lock:
            self._undo.check()
            self._undo.undo()
            self._patched = []
            model = self.model
            if model is not None and _handles.get(model) is self:
                del _handles[model]

    def report(self) -> Report:
        rows = [_row(path, module, wrapper) for path, module, wrapper in self._live()]
        rows += [LayerReport(path, cls, "skipped: " + why) for path, cls, why in self._skipped]
        return Report(self._model_name, rows, self.source)

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"<gcshim.Handle {self._model_name}: {len(self.layers)} layers checkpointed>"


def _row(path: str, module: nn.Module, wrapper: _patch.CheckpointedForward) -> LayerReport:
    call = wrapper.gcshim_call
    return LayerReport(path, type(module).__name__, call.status(module), call.adapter.name,
                       call.mode, call.note)


def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"gcshim expects a torch.nn.Module, got {type(model).__name__}")
    return model


def is_applied(model: nn.Module) -> bool:
    """Whether any layer under `model` is checkpointed by gcshim."""
    return next(_patch.iter_patched(_check_model(model)), None) is not None


def _applied_to(model: nn.Module) -> bool:
    """Whether an earlier apply(model), or a deep copy of an applied model, patched `model`.

    Patches that an apply() on one of its submodules made do not count: apply(model) then
    checkpoints the rest and leaves those alone.
    """
    handle = _handles.get(model)
    if handle is not None and handle.active:
        return True
    return any(wrapper.owner in (None, model) for *_, wrapper in _patch.iter_patched(model))


def apply(
    model: nn.Module,
    layers: LayerSpec = "auto",
    *,
    use_reentrant: bool = False,
    preserve_rng_state: bool = True,
    every: Optional[int] = None,
    first: Optional[int] = None,
    last: Optional[int] = None,
    budget: Union[int, str, None] = None,
    example_inputs: Optional[ExampleInputs] = None,
    offload: bool = False,
    strict: bool = False,
    **checkpoint_options: Any,
) -> Handle:
    """Checkpoint the chosen layers of `model` in place; returns a Handle to undo it.

    layers: "auto" (adapter table, then transformers' _no_split_modules, then repeated blocks
        of a ModuleList/Sequential), a class or tuple/list of classes, a class-name glob such
        as "*DecoderLayer", a callable (name, module) -> bool, or a list mixing these.
    every, first, last: of the selected layers (in forward order), checkpoint only the first
        or last k, and of those every n-th.
    budget: bytes (or "12GiB") one training step may allocate; gcshim measures a step on
        `example_inputs` and checkpoints the fewest layers that fit (see `gcshim.plan`).
    offload: keep checkpointed layers' inputs in pinned CPU memory until backward (CUDA).
    strict: with use_reentrant=True, raise SideChannelError for a layer that hands a tensor
        needing a gradient to later layers other than through its outputs (reentrant would
        lose that gradient) instead of checkpointing that layer non-reentrant with a warning.
    use_reentrant, preserve_rng_state, and the other options of torch.utils.checkpoint that
        the installed torch has (context_fn, determinism_check, debug, early_stop, ...).
    """
    _check_model(model)
    options = make_options(use_reentrant, preserve_rng_state, strict, **checkpoint_options)
    budget_bytes = _check_policy(every, first, last, budget, example_inputs, offload, options)
    with _lock:
        if _applied_to(model):
            notice_once(
                "apply-twice",
                f"gcshim: {type(model).__name__} is already applied; apply() did nothing. "
                "Call remove() first to change what is checkpointed.",
            )
            return _handles.get(model) or _handle_from_tree(model)
        selection = select(model, layers)
        chosen_plan = None
        if budget_bytes is not None:
            chosen_plan = _plan(model, selection, options, offload, example_inputs, budget_bytes)
            selection = policy.narrow(selection, chosen_plan.checkpoint,
                                      "not needed to fit the budget")
        elif (every, first, last) != (None, None, None):
            paths = [path for path, _module in selection.chosen]
            selection = policy.narrow(selection, policy.uniform(paths, every, first, last),
                                      "left out by " + policy.describe(every, first, last))
        handle = _apply_selection(model, selection, options, offload)
        handle.plan = chosen_plan
        return handle


def plan(
    model: nn.Module,
    example_inputs: ExampleInputs,
    budget: Union[int, str],
    layers: LayerSpec = "auto",
    *,
    use_reentrant: bool = False,
    preserve_rng_state: bool = True,
    offload: bool = False,
    **checkpoint_options: Any,
) -> Plan:
    """The layers `apply(model, budget=..., example_inputs=...)` would checkpoint, with the
    measurements behind the choice; nothing stays applied. Raises BudgetError (with the
    numbers) when even checkpointing every layer does not fit."""
    _check_model(model)
    options = make_options(use_reentrant, preserve_rng_state, **checkpoint_options)
    budget_bytes = _check_policy(None, None, None, budget, example_inputs, offload, options)
    with _lock:
        if _applied_to(model):
            raise RuntimeError(f"gcshim: {type(model).__name__} is already applied; call "
                               "remove() before planning it")
        selection = select(model, layers)
        return _plan(model, selection, options, offload, example_inputs, budget_bytes)


def _check_policy(every: Any, first: Any, last: Any, budget: Any, example_inputs: Any,
                  offload: Any, options: CheckpointOptions) -> Optional[int]:
    """Validate the policy options before anything is touched; the budget in bytes."""
    policy.check_uniform(every, first, last, budget)
    if not isinstance(offload, bool):
        raise TypeError(f"offload must be a bool, got {offload!r}")
    if offload and not options.use_reentrant and not non_reentrant_saves_inputs():
        raise UnsupportedOptionError(
            f"offload=True with use_reentrant=False needs torch>=2.1: torch {torch.__version__}'s "
            "non-reentrant checkpoint holds layer inputs where saved-tensor hooks cannot move "
            "them (offload would do nothing); pass use_reentrant=True or upgrade torch")
    if budget is None:
        if example_inputs is not None:
            raise ValueError("example_inputs= is only used with budget=")
        return None
    if example_inputs is None:
        raise ValueError("budget= needs example_inputs= (the inputs of one training step, "
                         "a dict of keyword arguments, or a callable running forward and "
                         "backward) to measure the model")
    return parse_bytes(budget)


def _plan(model: nn.Module, selection: Selection, options: CheckpointOptions, offload: bool,
          example_inputs: ExampleInputs, budget: int) -> Plan:
    if not model.training:
        raise RuntimeError("gcshim: planning a budget needs the model in training mode "
                           "(model.train()); checkpointing only runs in training")
    step = training_step(model, example_inputs)

    @contextlib.contextmanager
    def applied_to(paths: Sequence[str]) -> Iterator[None]:
        if not paths:
            yield
            return
        subset = policy.narrow(selection, paths, "planning")
        handle = _apply_selection(model, subset, options, offload)
        try:
            yield
        finally:
            handle.remove()

    return make_plan(model, selection.chosen, step, budget, applied_to)


def _offloader(offload: bool) -> Optional[Offloader]:
    if not offload:
        return None
    if not torch.cuda.is_available():
        notice_once("offload-cpu", "gcshim: offload=True does nothing without a CUDA device; "
                    "checkpointing runs as usual", logging.INFO)
        return None
    return Offloader()


def _apply_selection(model: nn.Module, selection: Selection, options: CheckpointOptions,
                     offload: bool) -> Handle:
    """Patch the chosen layers and tell the frameworks, all or nothing: every change goes into
    one undo log as it is made, and an error or interrupt anywhere replays it."""
    offloader = _offloader(offload)
    last_path = selection.chosen[-1][0] if selection.chosen else None
    patched: List[Tuple[str, nn.Module, _patch.CheckpointedForward]] = []
    undo = UndoLog()
    current = ""
    try:
        for current, module in selection.chosen:
            adapter = find_adapter(module, ancestor_classes(model, current))
            # backward needs the last layer's inputs first: they stay on the device
            layer_offloader = offloader if current != last_path else None
            wrapper = _patch.patch(module, adapter, options, model, undo, layer_offloader,
                                   current)
            patched.append((current, module, wrapper))
        current = ""
        for framework in hooks.frameworks():
            framework.switch_off([m for f, m in selection.switch_off if f is framework], undo)
            framework.on_applied(
                model, [(path, module, wrapper.gcshim_call.adapter)
                        for path, module, wrapper in patched], options, undo)
    except BaseException as error:  # KeyboardInterrupt too: all or nothing
        undo.undo()
        if isinstance(error, Exception):
            annotate(error, f"gcshim: could not patch {current!r}" if current else
                     "gcshim: could not set the frameworks' checkpointing flags")
        raise
    for path, _module, why in selection.skipped:
        logger.info("gcshim: %s left alone: %s", path, why)
    handle = Handle(model, patched, selection.skipped, selection.source, undo)
    _handles[model] = handle
    return handle


def _handle_from_tree(model: nn.Module) -> Handle:
    """A Handle for patches found on a model (a kept deep copy's): its undo unpatches them."""
    undo = UndoLog()
    found = list(_patch.iter_patched(model))
    for _path, module, _wrapper in found:
        undo.record(_patch.unpatch, module)
    return Handle(model, found, [], "found on the model", undo)


def remove(model_or_handle: Union[nn.Module, Handle]) -> None:
    """Undo gcshim on a model (every gcshim patch under it) or a Handle; harmless if none."""
    if isinstance(model_or_handle, Handle):
        model_or_handle.remove()
        return
    model = _check_model(model_or_handle)
    with _lock:
        modules = list(model.named_modules())  # one walk serves the check and the removal
        for path, module in modules:
            _patch.check_removable(module, path)
        handle = _handles.pop(model, None)
        if handle is not None:
            handle.remove()
        for _path, module in modules:  # patches no Handle recorded (a kept deep copy's)
            _patch.unpatch(module)


def report(model_or_handle: Union[nn.Module, Handle]) -> Report:
    """What is checkpointed under a model (or by a Handle), by which adapter, in which mode."""
    if isinstance(model_or_handle, Handle):
        return model_or_handle.report()
    model = _check_model(model_or_handle)
    handle = _handles.get(model)
    if handle is not None and handle.active:
        return handle.report()
    rows = [_row(path, module, wrapper) for path, module, wrapper in _patch.iter_patched(model)]
    return Report(type(model).__name__, rows)


@contextlib.contextmanager
def applied(model: nn.Module, layers: LayerSpec = "auto", **options: Any) -> Iterator[Handle]:
    """`apply` for the duration of a with-block; an apply made before the block stays."""
    was_applied = _applied_to(_check_model(model))
    handle = apply(model, layers, **options)
    try:
        yield handle
    finally:
        if not was_applied:
            handle.remove()

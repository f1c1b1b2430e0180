"""What a patched layer's forward does on each call."""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .._log import notice_once, warn_once
from ..adapters import Adapter
from ..errors import SideChannelError, add_context
from . import caches, hooks, side_channels, side_effects, tree
from .offload import Offloader
from .signature import Signature
from .torch_checkpoint import (
    CONTROL_FLOW,
    CheckpointOptions,
    checkpoint,
    checkpoint_hooks_on_top,
    current_graph_task_id,
    inside_other_checkpoint,
    is_compiling,
    non_reentrant_saves_inputs,
    top_saved_tensors_hooks,
    unused_outputs,
)


def skip_reason(module: nn.Module) -> Optional[str]:
    """Why this call is not checkpointed for lack of a backward (a key of SKIPPED), or None."""
    if not module.training:
        if torch.is_grad_enabled():
            notice_once("eval-grad", f"gcshim: {type(module).__qualname__} runs forward in eval "
                        "mode with grad enabled: gcshim checkpoints only in training mode, so "
                        "this step keeps every activation (call model.train() to checkpoint)",
                        logging.INFO)
        return "eval"
    return None if torch.is_grad_enabled() else "no-grad"


def handing_to(module: nn.Module, adapter: Adapter) -> Optional[hooks.Framework]:
    """The framework whose own checkpointing does this layer's calls now, if any."""
    return next((framework for framework in hooks.frameworks()
                 if framework.handles_call(module, adapter)), None)


# what the report says of a layer whose last call was not checkpointed, and why
SKIPPED = {
    "eval": "skipped: eval mode",
    "no-grad": "skipped: grad disabled",
    "frozen": "skipped: nothing in it needs a gradient",
    "nested": "skipped: runs inside the model's own checkpoint",
    "cache": "skipped: fills a cache its model reads later",
}


def cache_policy(module: nn.Module, adapter: Adapter) -> str:
    """The adapter row's, unless the layer's class declares one to its framework."""
    for framework in hooks.frameworks():
        declared = framework.cache_policy(module)
        if declared is not None:
            return declared
    return adapter.cache_policy


def _find_ddp_class() -> Optional[type]:
    try:
        from torch.nn.parallel import DistributedDataParallel
    except ImportError:  # a torch built without it
        return None
    return DistributedDataParallel


# The DDP whose forward is running (DDP sets it during its forward, 2.1+), or None: C-level,
# since the reentrant call path asks on every layer call.
_active_ddp = functools.partial(getattr, _find_ddp_class(), "_active_ddp_module", None)


def _ddp_breaks_reentrant() -> bool:
    """Inside the forward of a DDP with find_unused_parameters=True (and no static graph),
    where reentrant checkpointing fails in backward: DDP marks the parameters it cannot see
    through the reentrant call as unused, then their gradients arrive ("Expected to mark a
    variable ready only once")."""
    active = _active_ddp()
    return (active is not None and bool(getattr(active, "find_unused_parameters", False))
            and not getattr(active, "static_graph", False))


def _holds_buffers(layer: nn.Module) -> bool:
    """Whether the layer or a module inside it has a buffer (a plain walk: it runs per layer
    at apply, where named_modules' generators cost more than the rest of patching)."""
    pending = [layer]
    while pending:
        module = pending.pop()
        if module._buffers:
            return True
        pending.extend(m for m in module._modules.values() if m is not None)
    return False


_ONE_TENSOR = object()  # the skeleton of an output that is one tensor


class _FlatOutputs:
    """Reentrant checkpoint connects only top-level tensor outputs to autograd: the layer's
    output leaves `run` flat and is rebuilt after; outputs that backward finds unused are
    detached in the recompute (see `unused_outputs`)."""

    __slots__ = ("skeleton", "count", "unused")

    def __init__(self) -> None:
        self.skeleton: Any = None
        self.count = 0
        self.unused: Optional[List[int]] = None  # filled by backward, before the recompute

    def flat(self, output: Any, recompute: bool, extra: Sequence[torch.Tensor] = ()
             ) -> Tuple[torch.Tensor, ...]:
        if type(output) is torch.Tensor and not extra:  # the usual layer: nothing to take apart
            self.skeleton, self.count = _ONE_TENSOR, 1
            return (output,)
        tensors, self.skeleton = tree.flatten(output)
        self.count = len(tensors)
        flat = (*tensors, *extra)
        if recompute and self.unused:
            # no gradient to give them: backward skips outputs that need none
            dropped = self.unused
            flat = tuple(tensor.detach() if i in dropped else tensor
                         for i, tensor in enumerate(flat))
        return flat

    def whole(self, flat: Sequence[torch.Tensor]) -> Any:
        if self.skeleton is _ONE_TENSOR:  # one output: unused, its node never runs
            return flat[0]
        self.unused = unused_outputs(flat)
        return tree.unflatten(self.skeleton, flat[:self.count])


class CheckpointedCall:
    """The wrapt wrapper function of one patched layer (shared, immutable state)."""

    __slots__ = ("path", "adapter", "options", "signature", "offloader", "_cache_names",
                 "_cache_in_signature", "non_reentrant", "probed", "fallback", "replays_state",
                 "last_skip", "_policy", "_flags", "_class_flags", "_has_buffers",
                 "_written_buffers", "_fast")

    def __init__(self, adapter: Adapter, options: CheckpointOptions, signature: Signature,
                 offloader: Optional[Offloader] = None, path: str = "",
                 layer: Optional[nn.Module] = None):
        self.path = path  # the layer's path in the model, for error messages
        self.adapter = adapter
        self.options = options
        self.signature = signature
        self.offloader = offloader
        # Decided once, so a layer without cache arguments pays nothing for them per call.
        self._cache_names = frozenset(adapter.cache_names)
        self._cache_in_signature = signature.mentions_any(adapter.cache_names)
        # where reentrant mode cannot work (torch.compile; DDP finding unused parameters; a
        # layer with a side channel)
        self.non_reentrant = dataclasses.replace(options, use_reentrant=False)
        # What the first checkpointed call found (see gcshim.side_channels): whether it ran,
        # why reentrant was given up for this layer, whether its recompute replays state.
        self.probed = False
        self.fallback: Optional[str] = None
        self.replays_state: Optional[str] = None
        # why the latest call was not checkpointed (a key of SKIPPED), None if it was; "took
        # over": gcshim checkpointed it though a framework checkpoints the layer's others
        self.last_skip: Optional[str] = None
        # the attributes a framework sets where its own checkpointing may take calls over
        self._flags = tuple(f.call_flag for f in hooks.frameworks() if f.call_flag)
        # those of them the layer's class defines (transformers' layer classes default theirs
        # to False): only these are looked up on the class per call, where a missing one
        # would cost getattr an AttributeError and its message every call
        self._class_flags = self._flags
        # Decided at patch time, from the layer (never kept: it holds this call): its cache
        # policy, whether it has buffers that a forward may update (watched so that the
        # recompute does not update them again).
        self._policy = adapter.cache_policy
        self._has_buffers = True
        # the buffers (owner's id, name) its forward writes into: copied before each forward
        self._written_buffers: FrozenSet[Tuple[int, str]] = frozenset()
        # set once the first call settles the layer (see _settled): positional calls then
        # take the shortest path
        self._fast = False
        if layer is not None:
            self._policy = cache_policy(layer, adapter)
            self._has_buffers = _holds_buffers(layer)
            self._class_flags = tuple(name for name in self._flags
                                      if hasattr(type(layer), name))

    def status(self, module: nn.Module) -> str:
        """What happened at the layer's last call, for the report."""
        framework = handing_to(module, self.adapter)  # known now, called or not
        if framework is not None and self.last_skip != "took over":
            return f"handed to {framework.own_checkpointing}"
        return SKIPPED.get(self.last_skip, "checkpointed") if self.last_skip else "checkpointed"

    def where(self, module: nn.Module) -> str:
        name = type(module).__qualname__
        return f"{self.path!r} ({name})" if self.path else name

    def _keeps_legacy_cache(self, module: nn.Module, args: Tuple[Any, ...],
                            kwargs: Dict[str, Any]) -> bool:
        """A layer outside transformers with no row of its own (a copy of an old transformers
        block): where its caches are legacy tuples (or None), nothing needs neutralising, and
        leaving `use_cache` alone keeps the output layout the layer's own stack indexes."""
        if not self.adapter.is_generic or any(framework.owns(type(module))
                                              for framework in hooks.frameworks()):
            return False
        return all(caches.is_legacy_cache(self.signature.locate(name, args, kwargs)[1])
                   for name in self.adapter.cache_args)

    def _flagged(self, instance: nn.Module) -> bool:
        """Whether a framework's checkpointing flag is up on the layer (then ask it)."""
        if any(map(instance.__dict__.get, self._flags)):
            return True
        for name in self._class_flags:
            if getattr(type(instance), name, False):
                return True
        return False

    def _may_carry_cache(self, kwargs: Dict[str, Any]) -> bool:
        return self._cache_in_signature or not self._cache_names.isdisjoint(kwargs)

    def __call__(
        self,
        wrapped: Callable[..., Any],
        instance: nn.Module,
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
    ) -> Any:
        if self._fast and not kwargs and instance.training and torch.is_grad_enabled() \
                and not (self._flags and (any(map(instance.__dict__.get, self._flags))
                                          or self._class_flags and self._flagged(instance))):
            # A settled layer called with tensors by position (the usual layer): `_checkpoint`'s
            # checks that can apply to it, in this frame. Anything else goes the long way.
            input_needs = False
            for arg in args:
                if type(arg) is not torch.Tensor:
                    break
                if arg.requires_grad:
                    input_needs = True
            else:
                # (inside_other_checkpoint(), spelled out: here a call costs more than the check)
                hooks = top_saved_tensors_hooks() if input_needs else None
                if input_needs and not is_compiling() and current_graph_task_id() == -1 and (
                        hooks is None or not checkpoint_hooks_on_top(hooks)) and not (
                        self.options.use_reentrant and _active_ddp() is not None
                        and _ddp_breaks_reentrant()):
                    self.last_skip = None
                    return self._checkpoint_positional(wrapped, instance, args)
        if not (instance.training and torch.is_grad_enabled()):
            self.last_skip = skip_reason(instance)
            return wrapped(*args, **kwargs)
        # a cache the caller filled (a learned prefix, a past, a recurrent state) is an input:
        # kept, and what the call changes in it put back for the recompute (a framework's own
        # checkpointing would drop it, so gcshim takes such calls)
        keeps_cache = self._may_carry_cache(kwargs) and caches.holds_input(
            self.adapter, self.signature, args, kwargs)
        handed = self._flagged(instance) and handing_to(instance, self.adapter) is not None
        if handed and not keeps_cache:
            self.last_skip = "framework"
            return wrapped(*args, **kwargs)
        # "took over": from the framework, for this call
        self.last_skip = "took over" if handed else None
        if keeps_cache and self._policy != "run-as-is":
            return self._checkpoint(wrapped, instance, args, kwargs, keeps_cache=True)
        policy = self._policy
        if policy == "keep" or (policy == "neutralise" and not self._may_carry_cache(kwargs)):
            return self._checkpoint(wrapped, instance, args, kwargs)  # no cache in this call
        if policy == "run-as-is" and caches.carries_cache(self.adapter, self.signature, args,
                                                          kwargs):
            layer = type(instance).__qualname__
            warn_once(
                f"cache-needed:{type(instance).__module__}.{layer}",
                f"gcshim: {layer} fills a cache its model reads later, so calls that pass one "
                "run without checkpointing (same gradients, no memory saved). To checkpoint "
                "them, train with use_cache=False. Shown once per layer class.",
            )
            self.last_skip = "cache"
            return wrapped(*args, **kwargs)
        edit = None
        if self._may_carry_cache(kwargs) and not self._keeps_legacy_cache(instance, args, kwargs):
            # an empty cache (made because use_cache is on) only collects for generation
            args, kwargs, edit = caches.neutralise_caches(self.adapter, self.signature, args,
                                                          kwargs)
        output = self._checkpoint(wrapped, instance, args, kwargs)
        if edit is None or not caches.returns_cache(type(instance)):
            return output
        return caches.restore_output(self.adapter, output, edit)

    def _checkpoint(
        self,
        wrapped: Callable[..., Any],
        module: nn.Module,
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
        keeps_cache: bool = False,
    ) -> Any:
        for name in self.adapter.copied_args:  # the caller writes into these after the call
            value = self.signature.locate(name, args, kwargs)[1]
            if value is not None:
                args, kwargs = self.signature.replace(name, args, kwargs, tree.map_tensors(
                    value, torch.clone))
        tensors, skeleton = tree.flatten_call(args, kwargs)
        input_needs = False
        for tensor in tensors:
            if tensor.requires_grad:
                input_needs = True
                break
        if not input_needs and keeps_cache:
            input_needs = caches.input_needs_grad(self.adapter, self.signature, args, kwargs)
        if not input_needs and not any(p.requires_grad for p in module.parameters()):
            # frozen layer, frozen inputs: nothing would be saved
            self.last_skip = "frozen"
            return wrapped(*args, **kwargs)
        compiling = is_compiling()
        if not compiling and inside_other_checkpoint():
            notice_once(f"nested:{self.path}", f"gcshim: layer {self.where(module)} runs inside "
                        "a checkpoint the model makes itself; gcshim does not checkpoint it "
                        "again", logging.INFO)
            self.last_skip = "nested"
            return wrapped(*args, **kwargs)
        if not compiling and not keeps_cache and self._settled() and (
                not self.options.use_reentrant or input_needs and not _ddp_breaks_reentrant()):
            self._fast = self._policy != "run-as-is" and not self._cache_in_signature
            if skeleton is tree.TENSORS_ONLY:
                return self._checkpoint_positional(wrapped, module, args)
            return self._checkpoint_settled(wrapped, module, args, kwargs, tensors, skeleton)
        options = self.options
        probe = None
        if compiling:
            # torch.compile cannot trace reentrant checkpointing (graph breaks around every
            # layer); non-reentrant gives the same gradients. No warning: one would be traced.
            options = self.non_reentrant
        elif not self.probed or self.replays_state is not None or keeps_cache:
            # what the call can reach, so that what it changes is put back for its recompute
            probe = side_channels.Probe(module, args, kwargs, tensors,
                                        self.signature.positions,
                                        self.adapter.cache_args if keeps_cache else ())
            if probe.cut is not None:
                raise SideChannelError(
                    f"gcshim: layer {self.where(module)} is passed a cache that holds something "
                    f"({caches.kinds(self.adapter, self.signature, args, kwargs)}), too large "
                    f"or deep for gcshim to put back what the call changes in it (it stopped "
                    f"at {probe.cut}); the recompute would not see what the forward saw. Pass "
                    "the layer no cache while training, or leave it out of `layers`.")
        if not compiling and (not self.probed or self.fallback is not None):
            # the first call keeps every graph (non-reentrant), whatever leaves the layer
            options = self.non_reentrant
        if options.use_reentrant and not compiling and _ddp_breaks_reentrant():
            warn_once(
                "ddp-reentrant",
                "gcshim: reentrant checkpointing fails under DistributedDataParallel("
                "find_unused_parameters=True) ('Expected to mark a variable ready only once'), "
                "so gcshim checkpoints non-reentrant there (same gradients). To choose "
                "yourself: gcshim.apply(..., use_reentrant=False), or DDP(..., "
                "static_graph=True), or find_unused_parameters=False. Shown once.",
            )
            options = self.non_reentrant
        reentrant = options.use_reentrant
        replay: List[side_channels.Replay] = []  # what to put back: known once the forward ran
        count = len(tensors)
        # a kept cache's tensors, in and out of reentrant checkpointing (see side_channels.Route)
        route = probe.route() if reentrant and keeps_cache and probe is not None else None
        if route is not None:
            tensors = [*tensors, *route.tensors]
        outputs = _FlatOutputs()
        state_names = self.adapter.module_state
        state_before = side_effects.snapshot_state(module, state_names) if state_names else []
        first_forward: List[Any] = []  # the buffers the first forward updated, once it ran
        has_buffers = self._has_buffers

        def run(*flat: torch.Tensor) -> Any:
            if compiling:
                # Traced into one graph: the recompute is the compiler's, not a second Python
                # call, so there is nothing to guard, and a side effect here would break it.
                call_args, call_kwargs = tree.unflatten_call(skeleton, flat[:count])
                return wrapped(*call_args, **call_kwargs)
            recompute = bool(first_forward)
            try:
                written: List[torch.Tensor] = []
                if not recompute:
                    # the forward gets the caller's own containers: a dict or list the layer
                    # writes into is theirs, for later layers to read
                    if has_buffers:
                        watched = side_effects.watch_buffers(module)
                        # what the recompute must read of buffers the forward writes into
                        copies = side_effects.copies_before(
                            watched, self._written_buffers if self.probed else None)
                        output = wrapped(*args, **kwargs)
                        self._written_buffers |= side_effects.written_in_place(watched)
                        first_forward.append(side_effects.changed_buffers(watched, copies))
                    else:
                        output = wrapped(*args, **kwargs)
                        first_forward.append(())
                    if route is not None:
                        written = route.written()
                else:  # the recompute: the containers as they were before the forward
                    call_args, call_kwargs = tree.unflatten_call(skeleton, flat[:count])
                    if not first_forward[0] and not state_before and not replay:  # the usual
                        output = wrapped(*call_args, **call_kwargs)
                    else:
                        with side_effects.buffers_kept(first_forward[0]), \
                                side_effects.state_replayed(module, state_names, state_before), \
                                side_effects.maybe(replay[0] if replay else None), \
                                side_effects.maybe(route and route.reading(
                                    flat[count:count + len(route.inputs)])):
                            output = wrapped(*call_args, **call_kwargs)
                            if route is not None:
                                written = route.written()
            except CONTROL_FLOW:  # torch's early stop of a recompute: not an error
                raise
            except Exception as error:
                self._note_error(error, module, recompute)
                raise
            return outputs.flat(output, recompute, written) if reentrant else output

        trial = None
        if probe is not None and not self.probed and self.options.use_reentrant:
            # how reentrant's forward would run (no grad), to compare with the real forward
            devices = sorted({t.device.index or 0 for t in tensors if t.is_cuda})
            trial = side_channels.run_without_grad(lambda: wrapped(*args, **kwargs), module,
                                                   probe, devices)
        if reentrant and not input_needs:
            # Frozen inputs (frozen embeddings, LoRA): without an input that requires grad the
            # reentrant output would not require grad and the layer's parameters would get
            # none. An unused leaf that requires grad connects it.
            tensors = [*tensors, torch.zeros((), requires_grad=True)]
        if self.offloader is None:
            output = checkpoint(run, tensors, options, compiling)
        else:
            with self.offloader.moving_saved_inputs():
                output = checkpoint(run, tensors, options, compiling)
        if probe is not None:
            try:
                if not self.probed:
                    findings = probe.findings()
                    if trial is not None and not (trial[0] and side_channels.same_values(
                            trial[1], output)):
                        findings.append(side_channels.Finding("grad mode", ""))
                    self._settle(module, findings)
                changed = probe.replay()
            except SideChannelError:
                # This call's graph lives on where the layer wrote it (an attribute of its own)
                # and holds `run`, which holds the layer: a cycle through autograd that
                # Python's collector cannot see. No backward follows the error: `run` lets go.
                wrapped = module = None  # noqa: F841 (cells of `run`)
                raise
            if changed is not None:
                replay.append(changed)
        if reentrant:
            if route is not None:
                route.write_back(output[outputs.count:])
                node = next((t.grad_fn for t in output if t.grad_fn is not None), None)
                if node is not None:
                    # The cache now holds outputs of this checkpoint, whose node holds `run`,
                    # which holds the cache: a cycle through autograd that Python's collector
                    # cannot see. Once backward has recomputed the layer, `run` lets go.
                    def release(*_: Any) -> None:
                        nonlocal args, kwargs, skeleton, route
                        args, kwargs, skeleton, route = (), {}, None, None
                        replay.clear()

                    node.register_hook(release)
            output = outputs.whole(output)
        return output

    def _settled(self) -> bool:
        """A layer whose first call found nothing to replay or fall back for, with no buffers,
        state or offload: the usual layer, on a short path."""
        return (self.probed and self.fallback is None and self.replays_state is None
                and not self._has_buffers and not self.adapter.module_state
                and self.offloader is None)

    def _checkpoint_positional(self, wrapped: Callable[..., Any], module: nn.Module,
                               args: Tuple[Any, ...]) -> Any:
        """`_checkpoint_settled` for a call with tensors by position only (the usual layer):
        forward and recompute take the checkpoint's tensors as they come, and a closure made
        for the mode carries nothing else (each captured name costs on every call)."""
        forward_done = []
        if not self.options.use_reentrant:
            def run(*flat: torch.Tensor) -> Any:
                recompute = bool(forward_done)  # (is_recomputing() reads it on the stack)
                try:
                    if not recompute:
                        forward_done.append(True)
                    return wrapped(*flat)
                except CONTROL_FLOW:
                    raise
                except Exception as error:
                    self._note_error(error, module, recompute)
                    raise

            return checkpoint(run, args, self.options)
        outputs: Optional[_FlatOutputs] = None  # made for an output to take apart

        def run_reentrant(*flat: torch.Tensor) -> Any:  # (no early stop to let through)
            nonlocal outputs
            recompute = bool(forward_done)  # (is_recomputing() reads it on the stack)
            try:
                if not recompute:
                    forward_done.append(True)
                output = wrapped(*flat)
            except Exception as error:
                self._note_error(error, module, recompute)
                raise
            if type(output) is torch.Tensor:
                return output
            if outputs is None:
                outputs = _FlatOutputs()
            return outputs.flat(output, recompute)

        output = checkpoint(run_reentrant, args, self.options)
        return output if outputs is None else outputs.whole(output)

    def _checkpoint_settled(self, wrapped: Callable[..., Any], module: nn.Module,
                            args: Tuple[Any, ...], kwargs: Dict[str, Any],
                            tensors: Sequence[torch.Tensor], skeleton: Any) -> Any:
        """`_checkpoint` for a settled layer called with keywords or containers (tensors by
        position only take `_checkpoint_positional`): the same call, without the checks and
        the bookkeeping that cannot apply to it."""
        count = len(tensors)
        forward_done = []
        reentrant = self.options.use_reentrant
        outputs: Optional[_FlatOutputs] = None  # made for a reentrant output to take apart

        def run(*flat: torch.Tensor) -> Any:
            nonlocal outputs
            recompute = bool(forward_done)  # (is_recomputing() reads it on the stack)
            try:
                if not recompute:
                    forward_done.append(True)
                    output = wrapped(*args, **kwargs)  # the caller's own containers
                else:
                    call_args, call_kwargs = tree.unflatten_call(skeleton, flat[:count])
                    output = wrapped(*call_args, **call_kwargs)
            except CONTROL_FLOW:
                raise
            except Exception as error:
                self._note_error(error, module, recompute)
                raise
            if not reentrant or type(output) is torch.Tensor:  # one tensor: nothing to flatten
                return output
            if outputs is None:
                outputs = _FlatOutputs()
            return outputs.flat(output, recompute)

        output = checkpoint(run, tensors, self.options)
        if outputs is None:  # non-reentrant, or one tensor
            return output
        return outputs.whole(output)

    def _note_error(self, error: Exception, module: nn.Module, recompute: bool) -> None:
        """Say where a layer's own error passed through gcshim (torch's early-stop exception,
        which steers the recompute, is caught before this and passes untouched)."""
        add_context(error, f"gcshim: raised in checkpointed layer {self.where(module)} "
                    + ("while backward recomputed it" if recompute else "in its forward"))

    @property
    def mode(self) -> str:
        """The mode this layer is checkpointed in, and why when it differs from the one asked."""
        if self.fallback is not None:
            return "non-reentrant (fallback)"
        return self.options.mode

    @property
    def note(self) -> str:
        notes = []
        if self.fallback is not None:
            notes.append(f"reentrant would give other gradients: it {self.fallback}")
        if self.replays_state is not None:
            notes.append(f"recompute replays state it {self.replays_state}")
        return "; ".join(notes)

    def _settle(self, module: nn.Module, findings: List[side_channels.Finding]) -> None:
        """Decide, from the first call's findings, how this layer is checkpointed from now on."""
        self.probed = True
        # every call from now on puts back what the call changes, for its recompute
        state = [str(f) for f in findings
                 if f.kind in ("state", "in-place state") and not f.in_cache]
        if any(f.in_cache for f in findings):
            state.insert(0, "keeps in the cache it is passed (a learned prefix, a past, a "
                         "recurrent state)" + (", carried in and out of the reentrant "
                                               "checkpoint" if self.options.use_reentrant else ""))
        if state or any(f.kind in ("escape", "written in place") for f in findings):
            self.replays_state = "; ".join(state) or "writes where later layers read"
        escapes = [f for f in findings if f.loses_gradient]
        if not escapes or not self.options.use_reentrant:
            return  # non-reentrant keeps the graph of whatever leaves the layer
        first_of_kind = {f.kind: str(f) for f in reversed(escapes)}
        why = "; and ".join(reversed(first_of_kind.values()))
        if len(escapes) > len(first_of_kind):
            why += f" (and {len(escapes) - len(first_of_kind)} more such places)"
        if self.options.strict or (self.offloader is not None
                                   and not non_reentrant_saves_inputs()):
            self.probed = False  # the next call finds it again, and raises again
            blocker = ("strict=True" if self.options.strict else
                       "offload=True needs reentrant checkpointing on this torch")
            raise SideChannelError(
                f"gcshim: layer {self.where(module)} {why}; reentrant checkpointing cannot "
                "give it the un-checkpointed step's gradients, and "
                f"{blocker} keeps gcshim from checkpointing the layer non-reentrant. Pass "
                "use_reentrant=False, or leave this layer out of `layers`.")
        self.fallback = why
        warn_once(
            f"side-channel:{self.path}:{type(module).__module__}.{type(module).__qualname__}",
            f"gcshim: layer {self.where(module)} {why}; so that its gradients are the "
            "un-checkpointed step's, gcshim checkpoints this layer non-reentrant (same "
            "memory). "
            "To choose yourself: use_reentrant=False, or strict=True to raise instead. Shown "
            "once per layer.",
        )


# The recomputes run in these closures: is_recomputing() finds them on the stack.
side_effects.mark_recompute_frames(CheckpointedCall._checkpoint, "run", "recompute")
side_effects.mark_recompute_frames(CheckpointedCall._checkpoint_settled, "run", "recompute")
side_effects.mark_recompute_frames(CheckpointedCall._checkpoint_positional, "run", "recompute")
side_effects.mark_recompute_frames(CheckpointedCall._checkpoint_positional, "run_reentrant",
                                   "recompute")

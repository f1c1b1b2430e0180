"""`gcshim inspect`: what `apply` would checkpoint in a model class, without training it.

The model is built on the meta device (no memory, no weights), so even a full-size default
configuration costs nothing; it is applied, reported, and removed.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from .. import api
from ..adapters import find_adapter
from ..core import hooks
from ..core.selection import ancestor_classes
from ..core.table import format_table
from ..errors import GcshimWarning


def _import_quietly(module_name: str) -> Any:
    """Import a module with a clean sys.argv (a script without a __main__ guard would read
    gcshim's arguments as its own), saying so when importing it runs a model."""
    saved_argv = sys.argv
    sys.argv = [module_name]
    forwards = [0]

    def count(_module: nn.Module, _args: Any) -> None:
        forwards[0] += 1

    hook = nn.modules.module.register_module_forward_pre_hook(count)
    try:
        module = importlib.import_module(module_name)
    except SystemExit as error:
        raise ValueError(f"importing {module_name!r} exited (code {error.code}): it runs as "
                         "a script on import; give it an `if __name__ == '__main__':` "
                         "guard") from None
    finally:
        hook.remove()
        sys.argv = saved_argv
    if forwards[0]:
        warnings.warn(f"gcshim inspect: importing {module_name!r} ran {forwards[0]} module "
                      "forward calls: it runs a training script on import (no `if __name__ == "
                      "'__main__':` guard)", GcshimWarning, stacklevel=3)
    return module


def resolve(target: str) -> type:
    """"transformers:LlamaForCausalLM" or "package.module:Class" -> the class."""
    module_name, sep, class_name = target.partition(":")
    if not sep or not module_name or not class_name:
        raise ValueError(f"{target!r}: give module:Class, e.g. transformers:LlamaForCausalLM")
    try:
        module = _import_quietly(module_name)
    except ImportError as error:
        raise ValueError(f"{target!r}: cannot import {module_name!r} ({error})") from None
    found: Any = module
    for part in class_name.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise ValueError(f"{target!r}: {module_name} has no {class_name!r}")
    if not isinstance(found, type):
        raise ValueError(f"{target!r} is not a class")
    return found


def build(cls: type) -> nn.Module:
    """An instance of a model class, a transformers model class, or a transformers config
    class, on the meta device."""
    with torch.device("meta"):
        if issubclass(cls, nn.Module) and getattr(cls, "config_class", None) is not None:
            return cls(cls.config_class())
        if issubclass(cls, nn.Module):
            try:
                return cls()
            except TypeError as error:
                raise ValueError(f"cannot build {cls.__name__} without arguments ({error}); "
                                 "inspect a class that builds from defaults") from None
        for framework in hooks.frameworks():  # a framework's config class
            model = framework.build(cls)
            if model is not None:
                return model
    raise ValueError(f"{cls.__name__} is neither an nn.Module nor a transformers config class")


def inspect_model(model: nn.Module) -> Dict[str, Any]:
    """What apply(model) checkpoints, by which adapter, and what transformers' own says."""
    handle = api.apply(model)
    try:
        report = handle.report()
    finally:
        handle.remove()
    modules = dict(model.named_modules())
    layers: List[Dict[str, Any]] = []
    # the framework whose model it is (its own checkpointing only exists on its models)
    framework, description = next(
        ((f, d) for f in hooks.frameworks() for d in [f.describe(model)] if d is not None),
        (None, {}))
    for row in report.rows:
        adapter = find_adapter(modules[row.path], ancestor_classes(model, row.path))
        layers.append({"path": row.path, "class": row.layer, "status": row.status,
                       "adapter": adapter.name,
                       "transformers_checkpointing": (framework.layer_verdict(adapter)
                                                      if framework is not None else "n/a"),
                       "notes": adapter.notes})
    info: Dict[str, Any] = {"model": type(model).__name__, "found_by": report.source,
                            "checkpointed": len(report.checkpointed), "layers": layers}
    info.update(description)
    return info


def format_inspection(info: Dict[str, Any]) -> str:
    lines = [f"{info['model']} (built on the meta device)"]
    if "transformers" in info:
        own = "supported" if info["supports_gradient_checkpointing"] else "not supported"
        lines.append(f"transformers {info['transformers']}: its own checkpointing is {own} "
                     "for this class")
    lines.append(f"gcshim would checkpoint {info['checkpointed']} of {len(info['layers'])} layers"
                 f" (found by {info['found_by']})")
    header: Tuple[str, ...] = ("layer path", "class", "gcshim", "adapter", "transformers' own")
    table = [header] + [(r["path"], r["class"], r["status"], r["adapter"],
                         r["transformers_checkpointing"]) for r in info["layers"]]
    lines += format_table(header, table[1:])
    return "\n".join(lines)

"""Tiny models as transformers' own test suite builds them: the second model source of the sweep.

Each model directory of transformers' `tests/models/` has a `*ModelTester` that makes a small
config and inputs (`prepare_config_and_inputs_for_common`) and a `*ModelTest` case listing the
model classes to build from them (`all_model_classes`, inputs adapted per class by
`_prepare_for_class`). Those configs turn on what a model really does (KV sharing, per-layer
inputs, stable layer norm, ...), which the default configs of `tiny_models` often leave off.

`tests/` is not in transformers' sdist: take it from a copy of transformers' repository at the
tag of the installed release, with `utils/` beside it (the tests import `utils/test_module`):

    git --git-dir=<transformers.git> archive v4.57.1 tests utils | tar -x -C /tmp/tf-4.57
    python -m tools.arch_sweep --testers /tmp/tf-4.57 --out docs/sweep/testers-4.57.6.jsonl

The tests read `src/transformers` under the checkout: it is linked to the installed package.
Optional packages the test modules import at the top (datasets) are stubbed when missing.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
import types
import unittest
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import torch

# imported at the top of some test modules, never used to build a model
OPTIONAL = ("datasets", "timeout_decorator", "sentencepiece")
MAX_CLASSES = 1  # of each test case's model classes: the first (the base model, mostly)


def _passthrough(self: Any, *args: Any, **kwargs: Any) -> Any:
    """As a decorator (`@timeout_decorator.timeout(30)`), the function unchanged."""
    return args[0] if args and callable(args[0]) else None


class _Stub(types.ModuleType):
    """A missing optional package: any name imported from it is a do-nothing class, whose
    instances decorate as the identity."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__init__": lambda self, *a, **k: None, "__call__": _passthrough})


def prepare(checkout: Path) -> None:
    """Make `tests.models.*` importable from `checkout` against the installed transformers."""
    import transformers
    import transformers.testing_utils  # noqa: F401 - reads which packages exist, before stubs

    source = checkout / "src"
    source.mkdir(exist_ok=True)
    link = source / "transformers"
    if not link.exists():
        link.symlink_to(Path(transformers.__file__).parent)
    os.chdir(checkout)  # the tests find src/ and utils/ from the working directory
    sys.path[:0] = [str(checkout), str(checkout / "utils")]
    for name in OPTIONAL:
        try:
            importlib.import_module(name)
        except ImportError:
            stub = _Stub(name)
            # `importlib.util.find_spec` of an imported module reads its spec (5.x tests ask)
            stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
            sys.modules[name] = stub


def model_dirs(checkout: Path) -> List[str]:
    """The model directories that have a modeling test."""
    root = checkout / "tests" / "models"
    return sorted(d.name for d in root.iterdir()
                  if (d / f"test_modeling_{d.name}.py").exists())


def _test_cases(module: types.ModuleType) -> Iterator[type]:
    for value in vars(module).values():
        if (isinstance(value, type) and issubclass(value, unittest.TestCase)
                and value.__module__ == module.__name__
                and any(k.__name__ == "ModelTesterMixin" for k in value.__mro__)):
            yield value


def cases(model_dir: str) -> Iterator[Tuple[str, Any, Any, Dict[str, Any]]]:
    """(name, model class, config, inputs) for the first MAX_CLASSES model classes each test
    case of the directory builds (a 2-core sweep of every head of every model runs for hours)."""
    module = importlib.import_module(f"tests.models.{model_dir}.test_modeling_{model_dir}")
    for test_class in _test_cases(module):
        case = test_class()
        case.setUp()
        for model_class in list(case.all_model_classes or ())[:MAX_CLASSES]:
            config, inputs = case.model_tester.prepare_config_and_inputs_for_common()
            inputs = case._prepare_for_class(inputs, model_class)
            yield f"{model_dir}/{model_class.__name__}", model_class, config, inputs


def weighted_loss(output: Any) -> torch.Tensor:
    """Every floating output that needs a gradient (returned caches left out, at any depth),
    each through a fixed random weight: a plain sum can hide a wrong gradient (behind a final
    LayerNorm, the sum's gradient is 0)."""
    from tools.tiny_models import output_tensors

    total = None
    for index, tensor in enumerate(output_tensors(output)):
        generator = torch.Generator().manual_seed(1000 + index)
        weight = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
        term = (tensor.float() * weight).sum()
        total = term if total is None else total + term
    if total is None:
        raise RuntimeError("the output has no tensor that requires grad")
    return total

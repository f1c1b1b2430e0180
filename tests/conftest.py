import logging
import os
import sys
from pathlib import Path

import pytest
import torch

# the tests' shared models (tests/models.py) and the maintainers' tools (tools.<name>): the one
# place either is put on the path
sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]

import gcshim  # noqa: E402

ROOT = Path(__file__).parents[1]


def _releases_installed_by_ci() -> None:
    """Point the tests on other transformers releases at the `pip install --target` copies that
    .ci/run makes (.ci/transformers-<version>), unless the environment names its own."""
    found = sorted(path.parent for path in (ROOT / ".ci").glob("transformers-*/transformers"))
    if not found:
        return
    oldest, *others = sorted(found, key=lambda p: tuple(
        int(part) for part in p.name.split("-", 1)[1].split(".") if part.isdigit()))
    os.environ.setdefault("GCSHIM_OLD_TRANSFORMERS", str(oldest))
    if others:
        os.environ.setdefault("GCSHIM_MORE_TRANSFORMERS", os.pathsep.join(map(str, others)))


_releases_installed_by_ci()


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="also run the tests marked slow (what CI runs)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long test; runs with --slow (as CI does)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """Each test starts as a fresh process would: no notices shown, a fixed seed."""
    gcshim.reset_notices()
    torch.manual_seed(0)
    yield
    gcshim.reset_notices()


@pytest.fixture(params=[False, True], ids=["non-reentrant", "reentrant"])
def reentrant(request):
    """The checkpointing mode: every test that takes `reentrant` runs in both."""
    return request.param


@pytest.fixture
def gcshim_log(caplog):
    caplog.set_level(logging.INFO, logger="gcshim")
    return caplog


@pytest.fixture
def checkpoint_calls(monkeypatch):
    """Every call gcshim makes to torch.utils.checkpoint.checkpoint, as (args, kwargs)."""
    import torch.utils.checkpoint as torch_checkpoint

    calls = []
    real = torch_checkpoint.checkpoint

    def spy(function, *args, **kwargs):
        calls.append((args, kwargs))
        return real(function, *args, **kwargs)

    monkeypatch.setattr(torch_checkpoint, "checkpoint", spy)
    return calls


@pytest.fixture
def auto(monkeypatch):
    """gcshim.auto imported but off; the test turns it on with the settings it wants."""
    monkeypatch.setenv("GCSHIM_DISABLE", "1")
    import gcshim.auto  # noqa: F401
    from gcshim.entry import activation as module

    module.deactivate()
    yield module
    module.deactivate()


try:  # the CI run generates a modest number of examples; nox -s stress many more
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", max_examples=60, deadline=None)
    _hypothesis_settings.register_profile("stress", max_examples=3000, deadline=None)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:
    pass

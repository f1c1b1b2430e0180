import logging
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import gcshim  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """Each test starts as a fresh process would: no notices shown, a fixed seed."""
    gcshim.reset_notices()
    torch.manual_seed(0)
    yield
    gcshim.reset_notices()


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
    import gcshim.auto as module

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

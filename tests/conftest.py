import logging
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

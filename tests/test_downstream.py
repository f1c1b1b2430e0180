"""Downstream code built on transformers layers (tests/downstream.py): every pattern through
every way in, exact, recomputed and lighter, on the installed transformers, on the releases
in GCSHIM_OLD_TRANSFORMERS / GCSHIM_MORE_TRANSFORMERS (pip --target installs, run in a
subprocess), and under `python -m gcshim run`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import downstream  # noqa: E402

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("entry", downstream.ENTRIES)
@pytest.mark.parametrize("pattern", list(downstream.PATTERNS))
def test_pattern_on_the_installed_transformers(pattern, entry):
    result = downstream.check(pattern, entry)
    assert downstream.passed(result), result


@pytest.mark.slow
@pytest.mark.skipif(not downstream.releases(), reason="set GCSHIM_OLD_TRANSFORMERS or "
                    "GCSHIM_MORE_TRANSFORMERS to pip --target installs of other releases")
@pytest.mark.parametrize("target", downstream.releases())
def test_patterns_on_other_releases(target):
    results = downstream.run_script([sys.executable, str(HERE / "downstream.py")],
                                    pythonpath=target)
    assert len(results) == len(downstream.PATTERNS) * len(downstream.ENTRIES)
    failed = [r for r in results if not downstream.passed(r)]
    assert not failed, failed


def test_patterns_under_gcshim_run():
    """The zero-line way in: a training script that calls gradient_checkpointing_enable()."""
    results = downstream.run_script(
        [sys.executable, "-m", "gcshim", "run", str(HERE / "downstream.py")], entries="enable")
    assert len(results) == len(downstream.PATTERNS)
    failed = [r for r in results if not downstream.passed(r)]
    assert not failed, failed
    # gcshim, not transformers' own branch, checkpointed the layers it cannot vouch for
    gated = next(r for r in results if r["pattern"] == "KeywordGate")
    assert "checkpointed" in gated["report"] and "GatedLayer" in gated["report"]

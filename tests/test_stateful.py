"""Stateful layers with `use_cache` left on (tests/stateful_models.py): RecurrentGemma, xLSTM,
Mamba, Mamba2, FalconMamba, Jamba, Zamba and Zamba2 under gcshim.apply in both modes, exact
(a reentrant layer that must give way to non-reentrant says so once), recomputed and lighter,
on the installed transformers and on the releases in GCSHIM_OLD_TRANSFORMERS /
GCSHIM_MORE_TRANSFORMERS."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import downstream  # noqa: E402
import stateful_models  # noqa: E402

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("arch", list(stateful_models.ARCHS))
def test_stateful_model_with_its_cache_on(arch, reentrant):
    result = stateful_models.check(arch, reentrant)
    if "absent" in result:
        pytest.skip(result["absent"])
    # the installed release builds and trains every one of these
    assert "no_build" not in result and "no_baseline" not in result, result
    assert stateful_models.passed(result), result


@pytest.mark.slow
@pytest.mark.parametrize("target", downstream.releases())
def test_stateful_models_on_other_releases(target):
    results = downstream.run_script([sys.executable, str(HERE / "stateful_models.py")],
                                    pythonpath=target)
    assert len(results) == 2 * len(stateful_models.ARCHS)
    failed = [r for r in results if not stateful_models.passed(r)]
    assert not failed, failed
    assert any("runs" in r for r in results)  # not every architecture absent

"""PEFT prefix tuning under gcshim (tests/prefix_tuning.py): decoder-only (sliding-window
caches among them) and encoder-decoder models, every way in, exact (the prefix's gradient among
them), recomputed and lighter, on the installed transformers and PEFT, and on the releases in
GCSHIM_OLD_TRANSFORMERS / GCSHIM_MORE_TRANSFORMERS with the PEFT release installed beside each
(.ci/run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import downstream  # noqa: E402
import prefix_tuning  # noqa: E402

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("entry", downstream.ENTRIES)
@pytest.mark.parametrize("arch", prefix_tuning.ARCHS)
def test_prefix_tuning_on_the_installed_releases(arch, entry):
    result = prefix_tuning.check(arch, entry)
    assert "no_baseline" not in result, result  # the installed releases prefix-tune them all
    assert prefix_tuning.passed(result), result


@pytest.mark.slow
@pytest.mark.parametrize("target", downstream.releases())
def test_prefix_tuning_on_other_releases(target):
    if not (Path(target) / "peft").is_dir():
        pytest.skip(f"no PEFT release installed beside transformers in {target} (.ci/run)")
    results = downstream.run_script([sys.executable, str(HERE / "prefix_tuning.py")],
                                    pythonpath=target)
    assert len(results) == len(prefix_tuning.ARCHS) * len(downstream.ENTRIES)
    failed = [r for r in results if not prefix_tuning.passed(r)]
    assert not failed, failed

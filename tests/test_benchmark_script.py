"""The benchmark script runs end to end (tiny size) and writes its results and pictures."""

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")
pytest.importorskip("peft")

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "bench.py"


def test_benchmark_writes_results_with_every_condition(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gcshim_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gcshim_bench", bench)  # its dataclasses look it up
    spec.loader.exec_module(bench)
    assert bench.main(["--size", "tiny", "--rounds", "1", "--calls", "20", "--no-compile",
                       "--out", str(tmp_path)]) == 0
    [result] = tmp_path.glob("*.md")
    text, prefix = result.read_text().split("with PEFT prefix tuning")
    for condition in ("none (anchor)", "transformers (anchor)", "torch AC (anchor)",
                      "gcshim all", "gcshim every=2", "gcshim budget", "gcshim offload"):
        assert text.count(f"| {condition} |") == 2, condition  # llama and gpt2
    assert "budget plan peak <= budget" in text and "apply` + `remove`" in prefix
    for condition in ("none (anchor)", "gcshim all", "gcshim all, reentrant"):
        assert f"| {condition} |" in prefix, condition
    assert "transformers' own checkpointing with the prefix: fails" in prefix
    pictures = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(pictures) == 2 and all(p.endswith(("-llama.png", "-gpt2.png")) for p in pictures)

"""`python -m gcshim demo` and the CPU peak-memory tracker it uses."""

import subprocess
import sys

import pytest
import torch
from torch import nn

import gcshim
from gcshim.budget.memory import LiveTensorTracker, peak_bytes
from gcshim.entry.demo import DemoConfig, run_demo

SMALL = DemoConfig(vocab_size=64, hidden_size=32, num_heads=2, num_layers=4, seq_len=32,
                   batch_size=4)


def test_tracker_counts_live_storages_only():
    base = torch.randn(256)  # allocated before: not counted, nor are views of it
    with LiveTensorTracker() as tracker:
        view = base.view(16, 16).t()
        a = torch.ones(1024)  # 4 KiB
        b = a * 2  # 4 KiB more: 8 KiB live at the peak
        del a, b
        c = torch.zeros(256)  # 1 KiB
    assert tracker.peak == 8192
    assert tracker.current == 1024
    del view, c


def test_checkpointing_lowers_the_measured_peak():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
                            for _ in range(6)])
    x = torch.randn(128, 64)

    def step():
        model(x).pow(2).mean().backward()

    plain = peak_bytes(step, torch.device("cpu"))
    with gcshim.applied(model):
        checkpointed = peak_bytes(step, torch.device("cpu"))
    assert checkpointed < 0.6 * plain, (checkpointed, plain)


def test_demo_rows():
    rows = run_demo(SMALL, steps=1)
    assert [row["run"] for row in rows] == ["no checkpointing", "gcshim", "gcshim reentrant"]
    assert [row["layers"] for row in rows] == [0, 4, 4]
    for row in rows:
        assert row["loss_equal"] and row["max_grad_diff"] <= 1e-5
    assert rows[1]["peak_bytes"] < rows[0]["peak_bytes"]
    assert rows[2]["peak_bytes"] < rows[0]["peak_bytes"]


def test_demo_command_prints_the_table():
    result = subprocess.run(
        [sys.executable, "-m", "gcshim", "demo", "--layers", "3", "--hidden", "32", "--seq",
         "16", "--batch", "2", "--steps", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("gcshim demo: TinyTransformer, 3 layers")
    assert any(line.startswith("gcshim reentrant") and "3/3" in line and "| yes" in line
               for line in lines)


@pytest.mark.parametrize("argv", [["demo", "--layers", "0"], ["nope"], []])
def test_cli_rejects_bad_arguments(argv):
    result = subprocess.run([sys.executable, "-m", "gcshim", *argv], capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert "usage: gcshim" in result.stderr

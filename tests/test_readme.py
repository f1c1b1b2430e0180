"""The README's examples run as written: every python block, and every `python -m gcshim`
command (against a script and a module that take any arguments)."""

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(python|bash)\n(.*?)```", README, flags=re.S)
PYTHON = [code for kind, code in BLOCKS if kind == "python"]
COMMANDS = [line.split("  #")[0].strip() for kind, code in BLOCKS if kind == "bash"
            for line in code.splitlines() if line.startswith("python -m gcshim ")]

# what `train.py` and `mypackage.train` stand for: a script that trains a little and prints the
# arguments it got
TRAIN = """
import sys, torch
from torch import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(8, 32), nn.Linear(32, 8)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(4))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


Net()(torch.randn(4, 8)).sum().backward()
print("args", sys.argv[1:])
"""


def _environment():
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GCSHIM_")}
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), environment.get("PYTHONPATH", "")])
    return environment


def _marks(code):
    marks = [pytest.mark.slow] if "Trainer(" in code or "lightning" in code else []
    for library in ("transformers", "peft", "lightning"):
        if library in code:
            marks.append(pytest.mark.skipif(importlib.util.find_spec(library) is None,
                                            reason=f"{library} is not installed"))
    return marks


def test_the_readme_has_examples():
    assert len(PYTHON) >= 6 and len(COMMANDS) >= 5


@pytest.mark.parametrize("code", [pytest.param(code, marks=_marks(code)) for code in PYTHON],
                         ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_python_example_runs(code, tmp_path):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, env=_environment(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("command", [pytest.param(c, marks=_marks(c)) for c in COMMANDS])
def test_command_runs(command, tmp_path):
    (tmp_path / "train.py").write_text(TRAIN)
    (tmp_path / "mypackage").mkdir()
    (tmp_path / "mypackage" / "__init__.py").write_text("")
    (tmp_path / "mypackage" / "train.py").write_text(TRAIN)
    words = shlex.split(command)
    result = subprocess.run([sys.executable, *words[1:]], capture_output=True, text=True,
                            cwd=tmp_path, env=_environment(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    if " run " in command:  # the script got exactly the words after it
        after_run = words.index("run")
        script_at = next(i for i, w in enumerate(words)
                         if i > after_run and w in ("train.py", "-m"))
        given = words[script_at + (2 if words[script_at] == "-m" else 1):]
        assert f"args {given!r}" in result.stdout
        assert "gcshim: checkpointing " in result.stderr


def test_the_demo_installs_what_keeps_torch_quiet():
    """torch warns "Failed to initialize NumPy" at import where numpy is missing: the demo's
    install line (and nox -s demo) bring it, through the `demo` extra."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^demo = \["numpy"\]', pyproject, flags=re.M)
    demo_line = next(code for kind, code in BLOCKS if kind == "bash" and "gcshim demo" in code)
    assert "'.[demo]'" in demo_line
    assert '".[demo]"' in (ROOT / "noxfile.py").read_text()

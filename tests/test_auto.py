"""`import gcshim.auto` and `python -m gcshim run`: gcshim for scripts that don't ask for it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from models import Block
from torch import nn

import gcshim
from gcshim.entry.settings import Settings

SCRIPT = Path(__file__).parent / "scripts" / "legacy_train.py"
ROOT = Path(__file__).parents[1]


# -- settings -------------------------------------------------------------------------------
def test_settings_parse_every_variable():
    settings = Settings.from_environ({
        "GCSHIM_LAYERS": "*Block, GPT2Block", "GCSHIM_REENTRANT": "Yes", "GCSHIM_EVERY": "3",
        "GCSHIM_OFFLOAD": "off", "GCSHIM_DISABLE": "0", "GCSHIM_LOG": "INFO"})
    assert settings == Settings(layers="*Block, GPT2Block", use_reentrant=True, every=3,
                                offload=False, disable=False, log="info")
    assert Settings.from_environ({"GCSHIM_BUDGET": "1.5GiB"}).budget == int(1.5 * 2**30)
    assert Settings.from_environ({}) == Settings()
    assert Settings.from_environ({"GCSHIM_EVERY": ""}) == Settings()  # empty means unset


@pytest.mark.parametrize("name, value, message", [
    ("GCSHIM_EVERY", "0", "positive integer"), ("GCSHIM_EVERY", "2.5", "positive integer"),
    ("GCSHIM_EVERY", "__import__('os')", "positive integer"),
    ("GCSHIM_REENTRANT", "maybe", "must be one of"), ("GCSHIM_OFFLOAD", "2", "must be one of"),
    ("GCSHIM_DISABLE", "disable", "must be one of"), ("GCSHIM_BUDGET", "lots", "is not a size"),
    ("GCSHIM_LAYERS", "a,,b", "globs"), ("GCSHIM_LAYERS", "My Block", "globs"),
    ("GCSHIM_LOG", "verbose", "must be one of"),
])
def test_bad_settings_are_one_clear_error(name, value, message):
    with pytest.raises(gcshim.GcshimConfigError, match=f"{name}=.*{message}"):
        Settings.from_environ({name: value})


def test_every_and_budget_together_are_refused():
    with pytest.raises(gcshim.GcshimConfigError, match="one or the other"):
        Settings.from_environ({"GCSHIM_EVERY": "2", "GCSHIM_BUDGET": "1GiB"})


def test_a_bad_value_fails_the_import_itself():
    result = subprocess.run([sys.executable, "-c", "import gcshim.auto"], capture_output=True,
                            text=True, env={**os.environ, "GCSHIM_REENTRANT": "sure"})
    assert result.returncode != 0
    assert "GcshimConfigError: GCSHIM_REENTRANT='sure'" in result.stderr


# -- the first training forward -------------------------------------------------------------


def _net():
    return nn.Sequential(nn.Linear(8, 8), *[Block() for _ in range(3)])


def test_first_training_forward_applies_once_and_the_hook_goes(auto):
    assert auto.activate(Settings(every=2))
    assert not auto.activate(Settings())  # on already: nothing more
    frozen = nn.Linear(8, 8).requires_grad_(False)
    frozen(torch.randn(2, 8))  # no parameter to train: not the model
    model = _net()
    model.eval()
    model(torch.randn(2, 8))  # eval: not training
    assert not gcshim.is_applied(model)
    model.train()
    for block in model[1:]:
        block.calls = 0
    model(torch.randn(2, 8)).sum().backward()
    assert auto.first_forward_target() is model
    assert gcshim.report(model).checkpointed == ["1", "3"]  # GCSHIM_EVERY=2
    assert [block.calls for block in model[1:]] == [2, 1, 2]  # recomputed in backward
    other = _net()
    other(torch.randn(2, 8)).sum().backward()
    assert not gcshim.is_applied(other)  # once per process
    assert not auto._activation.first_forward.armed


def test_a_script_that_applies_gcshim_itself_is_left_as_it_is(auto):
    auto.activate(Settings(every=2))
    model = _net()
    handle = gcshim.apply(model)
    model(torch.randn(2, 8)).sum().backward()
    assert gcshim.report(model).checkpointed == ["1", "2", "3"] and handle.active
    assert not auto._activation.first_forward.armed


def test_a_module_without_blocks_is_passed_over_for_the_next(auto):
    auto.activate(Settings())
    lonely = nn.Linear(8, 8)
    lonely(torch.randn(2, 8)).sum().backward()
    model = _net()
    model(torch.randn(2, 8)).sum().backward()
    assert not gcshim.is_applied(lonely) and gcshim.is_applied(model)


def test_budget_plans_on_the_second_step(auto):
    auto.activate(Settings(budget=10**9))
    model = _net()
    x = torch.randn(64, 8)
    model(x).sum().backward()
    assert gcshim.report(model).checkpointed == ["1", "2", "3"]  # first step: all
    model(x).sum().backward()
    assert gcshim.report(model).checkpointed == []  # the plan: nothing needed under 1 GB


def test_deactivate_restores_everything(auto):
    auto.activate(Settings())
    auto.deactivate()
    model = _net()
    model(torch.randn(2, 8)).sum().backward()
    assert not gcshim.is_applied(model)


# -- whole scripts, in their own processes ---------------------------------------------------
MEASURE = """
import runpy, sys, torch
from gcshim.budget.memory import LiveTensorTracker
how, script, *args = sys.argv[1:]
with LiveTensorTracker() as tracker:
    if how == "run":
        from gcshim.entry.cli import main
        code = main(["run", script, *args])
    else:
        sys.argv = [script, *args]
        runpy.run_path(script, run_name="__main__")
print(f"peak {tracker.peak}")
"""


def _measured(how, script, *args):
    result = subprocess.run([sys.executable, "-c", MEASURE, how, str(script), *args],
                            capture_output=True, text=True, cwd=ROOT, check=True)
    lines = result.stdout.splitlines()
    losses = [line for line in lines if line.startswith("loss")]
    return losses, int(lines[-1].split()[1])


def test_legacy_script_peak_drops_and_loss_stays_with_run_and_with_the_import(tmp_path):
    losses, peak = _measured("plain", SCRIPT, "3")
    run_losses, run_peak = _measured("run", SCRIPT, "3")
    imported = tmp_path / "legacy_with_import.py"
    imported.write_text("import gcshim.auto  # the one added line\n" + SCRIPT.read_text())
    import_losses, import_peak = _measured("plain", imported, "3")
    assert len(losses) == 3 and run_losses == losses and import_losses == losses
    assert run_peak < 0.7 * peak and import_peak < 0.7 * peak


def _gcshim_run(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "gcshim", "run", *args], capture_output=True,
                          text=True, cwd=kwargs.get("cwd", ROOT))


def test_run_keeps_the_scripts_exit_code_argv_and_traceback(tmp_path):
    assert _gcshim_run(str(SCRIPT), "1", "--exit", "7").returncode == 7
    failed = _gcshim_run(str(SCRIPT), "1", "--raise")
    assert failed.returncode == 1
    assert "RuntimeError: the script's own error" in failed.stderr
    assert 'legacy_train.py", line' in failed.stderr
    assert "runner.py" not in failed.stderr and "runpy" not in failed.stderr
    echo = tmp_path / "echo_argv.py"
    echo.write_text("import sys\nprint(sys.argv)\nprint(__name__)\n")
    shown = _gcshim_run("--every", "2", str(echo), "a", "--b", "-c")
    assert shown.stdout.splitlines() == [repr([str(echo), "a", "--b", "-c"]), "__main__"]


def test_run_a_module_and_bad_options(tmp_path):
    (tmp_path / "trainpkg").mkdir()
    (tmp_path / "trainpkg" / "__init__.py").write_text("")
    (tmp_path / "trainpkg" / "go.py").write_text(
        "import sys\nprint('module', __name__, sys.argv[1:])\n")
    shown = _gcshim_run("-m", "trainpkg.go", "x", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "module __main__ ['x']"
    bad = _gcshim_run("--budget", "plenty", str(SCRIPT), "1")
    assert bad.returncode == 2 and "GCSHIM_BUDGET='plenty'" in bad.stderr
    assert _gcshim_run().returncode == 2

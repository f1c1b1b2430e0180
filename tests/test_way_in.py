"""The user's way in: `run` arguments, settings that match nothing, the one-line notice,
`inspect` on scripts, what the report says, selecting layers, plain copies and pickles."""

import copy
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from models import CountsCalls, assert_exact_and_recomputed, assert_same_grads, grads_of
from torch import nn

import gcshim
from gcshim.entry.cli import _parser, _run_parser, main, split_run_arguments
from gcshim.entry.settings import Settings

ROOT = Path(__file__).parents[1]
SCRIPT = Path(__file__).parent / "scripts" / "legacy_train.py"


class Block(CountsCalls, nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        self.calls += 1
        return x + torch.tanh(self.lin(self.norm(x)))


class Net(nn.Module):
    def __init__(self, depth=4) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 8)
        self.blocks = nn.ModuleList(Block() for _ in range(depth))

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x.pow(2).mean()


def _gcshim(*args, env=None, cwd=ROOT):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GCSHIM_")}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "gcshim", *args], capture_output=True,
                          text=True, cwd=cwd, env=environment)


# -- run: the script's arguments are the script's ------------------------------------------------
@pytest.mark.parametrize("argv, ours, target, rest", [
    (["--budget", "12GiB", "-m", "pkg.train", "--config", "c.yaml"],
     ["--budget", "12GiB"], ("pkg.train", True), ["--config", "c.yaml"]),
    (["--budget=12GiB", "-mpkg.train", "--config=c.yaml", "-h"],
     ["--budget=12GiB"], ("pkg.train", True), ["--config=c.yaml", "-h"]),
    (["-m", "pkg.train", "--", "--every", "3"], [], ("pkg.train", True), ["--", "--every", "3"]),
    (["--every", "2", "train.py", "--every", "3", "-m", "x"],
     ["--every", "2"], ("train.py", False), ["--every", "3", "-m", "x"]),
    (["--layers=auto", "--", "train.py", "-h", "--"], ["--layers=auto"], ("train.py", False),
     ["-h", "--"]),
    (["--log", "info", "--quiet", "train.py"], ["--log", "info", "--quiet"],
     ("train.py", False), []),
    (["-h"], ["-h"], None, []),
])
def test_run_splits_its_options_from_the_scripts_as_python_does(argv, ours, target, rest):
    assert split_run_arguments(argv, _run_parser()) == (ours, target, rest)


def test_readme_run_example_passes_options_to_the_module(tmp_path):
    package = tmp_path / "mypackage"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "train.py").write_text("import sys\nprint(sys.argv[1:])\n")
    shown = _gcshim("run", "--budget", "12GiB", "-m", "mypackage.train", "--config", "c.yaml",
                    "-h", "--x=1", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == repr(["--config", "c.yaml", "-h", "--x=1"])


def test_every_option_has_help_and_version_prints():
    parsers = [_run_parser(), *_parser()._subparsers._group_actions[0].choices.values()]
    for parser in parsers:
        for action in parser._actions:
            if action.option_strings or parser.prog.endswith("inspect"):
                assert action.help, (parser.prog, action.dest)
    shown = _gcshim("--version")
    assert shown.returncode == 0 and shown.stdout.strip() == f"gcshim {gcshim.__version__}"
    assert "--reentrant" in _gcshim("run", "-h").stdout


# -- run / auto: never silent ------------------------------------------------------------------
def test_run_prints_one_line_and_warns_when_layers_match_nothing():
    normal = _gcshim("run", str(SCRIPT), "2")
    assert normal.returncode == 0, normal.stderr
    lines = [line for line in normal.stderr.splitlines() if line.startswith("gcshim:")]
    assert lines == ["gcshim: checkpointing 6 layers of Net (Block; non-reentrant), found by "
                     "auto: repeated blocks. GCSHIM_QUIET=1 hides this line"]
    quiet = _gcshim("run", str(SCRIPT), "1", env={"GCSHIM_QUIET": "1"})
    assert quiet.returncode == 0 and "gcshim" not in quiet.stderr
    for nope in (_gcshim("run", "--layers", "Nope", str(SCRIPT), "1"),
                 _gcshim("run", str(SCRIPT), "1", env={"GCSHIM_LAYERS": "block"})):
        assert nope.returncode == 0
        assert "GcshimWarning" in nope.stderr and "matched no layer in Net" in nope.stderr
        assert "Candidate block classes: Block" in nope.stderr
        assert "checkpointing 6 layers" not in nope.stderr


def test_settings_that_end_up_doing_nothing_warn_once(auto, monkeypatch):
    monkeypatch.setenv("GCSHIM_EVERYY", "2")  # a typo
    with pytest.warns(gcshim.GcshimWarning, match="GCSHIM_EVERYY is not a gcshim setting"):
        auto.activate(Settings(every=2))
    model = Net()
    gcshim.apply(model)  # the script checkpoints itself: GCSHIM_EVERY does nothing
    with pytest.warns(gcshim.GcshimWarning, match="GCSHIM_EVERY=2 did nothing: the script"):
        model(torch.randn(2, 8)).backward()
    auto.deactivate()
    if not torch.cuda.is_available():
        auto.activate(Settings(offload=True))
        with pytest.warns(gcshim.GcshimWarning, match="GCSHIM_OFFLOAD=1 does nothing without"):
            Net()(torch.randn(2, 8)).backward()


def test_auto_with_layers_matching_nothing_warns_with_the_apply_text(auto):
    auto.activate(Settings(layers="Nope"))
    model = Net()
    with pytest.raises(LookupError) as raised:
        gcshim.apply(Net(), "Nope")
    with pytest.warns(gcshim.GcshimWarning) as caught:
        model(torch.randn(2, 8)).backward()
    assert str(raised.value) in str(caught[0].message)
    assert not gcshim.is_applied(model)


# -- inspect -------------------------------------------------------------------------------------
NO_GUARD = """
import argparse, torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=1)
args = parser.parse_args()  # no __main__ guard: runs on import


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return torch.relu(self.lin(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(Block(), Block())

    def forward(self, x):
        return self.blocks(x)


model = Net()
for _ in range(args.steps):
    model(torch.randn(2, 4)).sum().backward()
"""


def test_inspect_imports_a_script_with_a_clean_argv_and_says_it_ran(tmp_path, monkeypatch,
                                                                   capsys):
    (tmp_path / "legacy_noguard.py").write_text(NO_GUARD)
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["gcshim", "inspect", "legacy_noguard:Net"])
    with pytest.warns(gcshim.GcshimWarning, match="runs a training script on import"):
        assert main(["inspect", "legacy_noguard:Net"]) == 0
    out = capsys.readouterr().out
    assert "gcshim would checkpoint 2 of 2 layers" in out
    assert sys.argv == ["gcshim", "inspect", "legacy_noguard:Net"]  # put back
    # not a transformers model: transformers' own checkpointing does not apply
    assert [line.split()[-1] for line in out.splitlines()[-2:]] == ["n/a", "n/a"]
    assert main(["inspect", "exits_on_import:Net"]) == 2
    assert "exited (code 3)" in capsys.readouterr().err


# -- the report ---------------------------------------------------------------------------------
def test_report_says_what_happened_at_each_layers_last_call(gcshim_log):
    model = Net()
    gcshim.apply(model)
    x = torch.randn(2, 8)
    assert {row.status for row in gcshim.report(model).rows} == {"checkpointed"}
    model.eval()
    model(x)
    model(x)
    assert {row.status for row in gcshim.report(model).rows} == {"skipped: eval mode"}
    eval_notices = [r for r in gcshim_log.records if "eval mode with grad" in r.getMessage()]
    assert len(eval_notices) == 1 and eval_notices[0].levelno == logging.INFO
    assert gcshim.report(model).checkpointed == []
    model.train()
    with torch.no_grad():
        model(x)
    assert {row.status for row in gcshim.report(model).rows} == {"skipped: grad disabled"}
    model(x).backward()
    assert gcshim.report(model).checkpointed == [f"blocks.{i}" for i in range(4)]


def test_report_says_transformers_checkpoints_after_it_takes_over():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1,
                                      vocab_size=32)
    model = transformers.LlamaForCausalLM(config).train()
    gcshim.apply(model)
    assert {row.status for row in gcshim.report(model).rows} == {"checkpointed"}
    # transformers 5.24's name, the older one before
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    assert {row.status for row in gcshim.report(model).rows} == {
        "handed to transformers' own gradient checkpointing"}
    assert "handed to transformers' own gradient checkpointing" in str(gcshim.report(model))


# -- selecting layers ------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, expected", [
    (lambda m: m.blocks, ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]),
    (lambda m: m.blocks[1], ["blocks.1"]),
    (lambda m: [m.blocks[0], m.blocks[3]], ["blocks.0", "blocks.3"]),
    (lambda m: [m.blocks[2], "blocks.0"], ["blocks.0", "blocks.2"]),
    (lambda m: "blocks.0", ["blocks.0"]),
    (lambda m: "blocks.*", ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]),
    (lambda m: ["blocks.0", "blocks.1"], ["blocks.0", "blocks.1"]),
    (lambda m: "blocks.[13]", ["blocks.1", "blocks.3"]),
    (lambda m: "Block,LayerNorm", ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]),
    (lambda m: "Nope, Linear", ["stem", "blocks.0.lin", "blocks.1.lin", "blocks.2.lin",
                                "blocks.3.lin"]),
])
def test_layers_by_instance_container_path_and_glob(spec, expected):
    model = Net()
    reference = grads_of(_stepped(copy.deepcopy(model)))
    handle = gcshim.apply(model, spec(model))
    assert handle.layers == expected
    for block in model.blocks:
        block.calls = 0
    _stepped(model)
    assert_same_grads(reference, model)
    recomputed = [f"blocks.{i}" for i, b in enumerate(model.blocks) if b.calls == 2]
    assert recomputed == [p for p in expected if p.startswith("blocks.") and p.count(".") == 1]


def _stepped(model):
    model(torch.arange(16.0).reshape(2, 8) / 16).backward()
    return model


def test_one_grammar_for_apply_the_cli_and_the_environment(auto):
    auto.activate(Settings.from_environ({"GCSHIM_LAYERS": "blocks.1,blocks.3"}))
    model = Net()
    model(torch.randn(2, 8)).backward()
    assert gcshim.report(model).checkpointed == ["blocks.1", "blocks.3"]
    args = _run_parser().parse_args(["--layers", "Block,LayerNorm"])
    assert gcshim.apply(Net(), args.layers).layers == [f"blocks.{i}" for i in range(4)]


def test_layer_selection_errors_name_the_problem():
    model = Net()
    with pytest.raises(LookupError, match="'blocks' is read as a class name"):
        gcshim.apply(model, "blocks")
    with pytest.raises(LookupError, match="not a submodule of Net"):
        gcshim.apply(model, Net().blocks[0])
    with pytest.raises(ValueError, match="comma-separated"):
        gcshim.apply(model, "Block,,Other")
    assert not gcshim.is_applied(model)


def test_auto_leaves_vit_embeddings_out():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                    intermediate_size=37, image_size=30, patch_size=2)
    model = transformers.ViTModel(config)
    report = gcshim.apply(model).report()
    assert len(report.rows) == 3 and all(row.layer == "ViTLayer" for row in report.rows)


def test_plan_is_the_same_on_every_call():
    model = nn.Sequential(*[nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
                            for _ in range(7)])
    x = torch.randn(128, 64)
    none = gcshim.plan(model, (x,), budget=10**12)  # fits: measures without checkpointing
    middle = none.peak_bytes - sum(c.saved_bytes for c in none.layers) // 2
    plans = [gcshim.plan(model, (x,), budget=middle).checkpoint for _ in range(3)]
    assert plans[0] and plans[0] == plans[1] == plans[2]


# -- copies and pickles -------------------------------------------------------------------------
def _tiny_llama():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1,
                                      vocab_size=32)
    return transformers.LlamaForCausalLM(config).train()


def _checkpoints(model):
    """transformers' is_activation_checkpointing (5.24), is_gradient_checkpointing before."""
    name = ("is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing")
            else "is_gradient_checkpointing")
    return getattr(model, name)


def test_copies_and_pickles_are_the_plain_model(reentrant):
    model = _tiny_llama()
    before = {path: set(vars(module)) for path, module in model.named_modules()}
    flags = {path: vars(module).get("gradient_checkpointing")
             for path, module in model.named_modules()}
    gcshim.apply(model, use_reentrant=reentrant)
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert not gcshim.is_applied(twin)
        assert {path: set(vars(m)) for path, m in twin.named_modules()} == before
        assert {path: vars(m).get("gradient_checkpointing")
                for path, m in twin.named_modules()} == flags
        assert not _checkpoints(twin)
    layer = model.model.layers[0]
    assert "forward" not in vars(copy.copy(layer))
    assert gcshim.is_applied(model)  # the original keeps its patches
    gcshim.remove(model)
    assert {path: set(vars(module)) for path, module in model.named_modules()} == before


def test_keep_on_copy_keeps_gcshim_on_a_deep_copy():
    model = _tiny_llama()
    ids = torch.randint(32, (2, 5))
    reference = copy.deepcopy(model)
    reference(ids, labels=ids).loss.backward()
    gcshim.apply(model)
    with gcshim.keep_on_copy():
        twin = copy.deepcopy(model)
        with pytest.raises(pickle.PicklingError, match="deep copies only"):
            pickle.dumps(model)
    assert gcshim.report(twin).checkpointed == ["model.layers.0", "model.layers.1"]
    assert _checkpoints(twin)
    assert_exact_and_recomputed(twin, lambda: twin(ids, labels=ids).loss.backward(),
                                grads_of(reference))
    assert not gcshim.is_applied(copy.deepcopy(twin))  # outside the block: plain again
    gcshim.remove(twin)
    assert not gcshim.is_applied(twin) and gcshim.is_applied(model)
    assert all("__getstate__" not in vars(m) for m in twin.modules())


def test_torch_save_of_an_applied_transformers_model_loads_plain_without_gcshim(tmp_path):
    model = _tiny_llama()
    gcshim.apply(model, use_reentrant=True)
    torch.save(model, tmp_path / "model.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        model = torch.load({str(tmp_path / "model.pt")!r}, weights_only=False)
        assert "gcshim" not in sys.modules
        assert not any("forward" in vars(m) for m in model.modules())
        assert not model.is_gradient_checkpointing
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# -- noise -------------------------------------------------------------------------------------
def test_no_cache_warning_on_a_plain_training_step_with_the_default_config():
    transformers = pytest.importorskip("transformers")
    config = transformers.BartConfig(vocab_size=32, d_model=16, encoder_layers=2,
                                     decoder_layers=2, encoder_attention_heads=2,
                                     decoder_attention_heads=2, encoder_ffn_dim=32,
                                     decoder_ffn_dim=32, max_position_embeddings=32)
    model = transformers.BartForConditionalGeneration(config).train()
    assert model.config.use_cache
    ids = torch.randint(3, 32, (2, 6))
    for reentrant in (False, True):
        gcshim.apply(model, use_reentrant=reentrant)
        with warnings.catch_warnings():
            warnings.simplefilter("error", gcshim.GcshimWarning)
            model(input_ids=ids, labels=ids).loss.backward()
        gcshim.remove(model)

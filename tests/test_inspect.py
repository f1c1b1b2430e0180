"""`python -m gcshim inspect`: what apply would checkpoint, from a class name alone."""

import json

import pytest
from torch import nn

from gcshim.entry.cli import main


class Net(nn.Module):
    """Builds from defaults, as inspect needs."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)) for _ in range(3))


def test_inspect_a_transformers_class_as_text(capsys):
    pytest.importorskip("transformers")
    assert main(["inspect", "transformers:OpenAIGPTLMHeadModel"]) == 0
    out = capsys.readouterr().out
    assert "its own checkpointing is not supported for this class" in out
    assert "gcshim would checkpoint 12 of 12 layers" in out
    assert "transformer.h.0" in out and "unsupported" in out


def test_inspect_a_config_class_as_json(capsys):
    pytest.importorskip("transformers")
    assert main(["inspect", "transformers:LlamaConfig", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "LlamaModel" and info["supports_gradient_checkpointing"] is True
    assert info["checkpointed"] == len(info["layers"]) == 32
    assert info["layers"][0]["adapter"] == "transformers Llama-style decoder layer"
    assert info["layers"][0]["transformers_checkpointing"] == "works"


def test_inspect_a_users_class(capsys):
    assert main(["inspect", f"{__name__}:Net", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [row["path"] for row in info["layers"]] == ["blocks.0", "blocks.1", "blocks.2"]
    assert "transformers" not in info


@pytest.mark.parametrize("target, message", [
    ("nocolon", "give module:Class"),
    ("no_such_module_xyz:Net", "cannot import"),
    (f"{__name__}:Missing", "has no 'Missing'"),
    ("torch.nn:Linear", "cannot build Linear without arguments"),
    ("json:dumps", "is not a class"),
])
def test_inspect_bad_targets_exit_2_with_the_reason(target, message, capsys):
    assert main(["inspect", target]) == 2
    assert message in capsys.readouterr().err

"""A representative subset of the architecture sweep (tools/arch_sweep.py), on two releases.

On the installed transformers every architecture runs in-process; a second release runs the
sweep in a subprocess when GCSHIM_OLD_TRANSFORMERS points at a `pip install --target` of it
(.ci/run installs 4.44.2 there). Each run must give gradients equal to the un-checkpointed step,
recompute, and a lower peak, in all four conditions (reentrant or not, use_cache off or left on).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import arch_sweep  # noqa: E402

# decoders of each signature family, encoders, seq2seq, vision, and models transformers
# itself cannot checkpoint (supports_gradient_checkpointing = False)
SUBSET = [
    "llama", "mistral", "mixtral", "qwen2", "gemma2", "phi", "gpt2", "gptj", "gpt_neox",
    "gpt_bigcode", "opt", "bloom", "falcon", "bert", "albert", "t5", "bart", "whisper", "vit",
    "xlnet", "ctrl",
]


def _check(record):
    assert record["status"] == "ran", record
    for condition, entry in record["conditions"].items():
        ours = entry["gcshim"]
        assert ours["status"] == "pass", (record["arch"], condition, ours)
        assert ours["peak_ratio"] < 1.0, (record["arch"], condition, ours)
        theirs = entry["transformers"]["status"]
        if record["hf_supports"] and theirs == "pass":
            # never fewer recomputed module calls than transformers' own checkpointing
            assert ours["recomputed"] >= entry["transformers"]["recomputed"] * 0.8


@pytest.mark.parametrize("arch", SUBSET)
def test_installed_transformers(arch):
    _check(arch_sweep.run_architecture(arch))


OLD = os.environ.get("GCSHIM_OLD_TRANSFORMERS")


@pytest.mark.skipif(not OLD, reason="set GCSHIM_OLD_TRANSFORMERS to a pip --target install")
def test_second_transformers_release(tmp_path):
    out = tmp_path / "sweep.jsonl"
    env = dict(os.environ, PYTHONPATH=OLD)
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "arch_sweep.py"), "--out", str(out),
         "--only", ",".join(SUBSET), "--timeout", "120"],
        env=env, check=True, capture_output=True, timeout=600,
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["arch"] for r in records} == set(SUBSET)
    versions = {r["transformers"] for r in records if "transformers" in r}
    assert versions and transformers.__version__ not in versions
    for record in records:
        _check(record)


@pytest.mark.parametrize("arch", SUBSET)
def test_rows_name_arguments_the_installed_layers_have(arch):
    """Each row's grad-carrying arguments exist in the real layer's signature."""
    import inspect

    import tiny_models

    import gcshim
    from gcshim.adapters import find_adapter

    model, _inputs = tiny_models.build(arch)
    handle = gcshim.apply(model)
    assert handle.layers
    for path in handle.layers:
        layer = model.get_submodule(path)
        row = find_adapter(layer)
        if row.is_generic:
            continue
        params = set(inspect.signature(type(layer).forward).parameters)
        assert params & set(row.grad_args), (arch, type(layer).__name__, row.name, params)

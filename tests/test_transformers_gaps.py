"""Models whose own checkpointing transformers lacks, breaks, or turns into a silent no-op."""

import copy
import sys
import warnings
from pathlib import Path

import pytest
import torch
from packaging.version import Version

import gcshim
from gcshim.adapters import find_adapter

transformers = pytest.importorskip("transformers")
import downstream  # noqa: E402
from sweep_records import arch_sweep, require_attribute, require_ran  # noqa: E402

HERE = Path(__file__).resolve().parent

# supports_gradient_checkpointing = False (enable raises), and the hybrids sharing one block
UNSUPPORTED = ["albert", "ctrl", "openai-gpt", "xlnet", "mpnet", "squeezebert", "funnel",
               "jetmoe", "bark", "bridgetower"]
HYBRIDS = ["zamba", "zamba2"]


@pytest.mark.parametrize("arch", UNSUPPORTED + HYBRIDS)
def test_gcshim_checkpoints_what_transformers_cannot(arch, monkeypatch):
    from tools import tiny_models

    if arch in HYBRIDS:  # the Mamba reference kernels are slow on CPU: a shorter batch
        monkeypatch.setattr(tiny_models, "SEQ", 8)
        monkeypatch.setattr(tiny_models, "BATCH", 2)
    record = require_ran(arch_sweep.run_architecture(arch))
    for condition, entry in record["conditions"].items():
        assert entry["gcshim"]["status"] == "pass", (arch, condition, entry["gcshim"])
        assert entry["gcshim"]["recomputed"] > 0
        if arch in UNSUPPORTED:
            assert entry["transformers"]["status"] == "unsupported"
    if arch in HYBRIDS:  # the hybrid layers around the one shared attention block
        assert "transformers Zamba hybrid layers" in entry["gcshim"]["adapters"]


def _mllama_vision():
    config = require_attribute(transformers, "MllamaVisionConfig")(
        hidden_size=32, num_hidden_layers=2, num_global_layers=2, attention_heads=4,
        intermediate_size=64, vision_output_dim=64, image_size=28, patch_size=14,
        max_num_tiles=2, supported_aspect_ratios=[[1, 1], [1, 2]],
        intermediate_layers_indices=[0],
    )
    model = transformers.MllamaVisionModel(config)
    inputs = {
        "pixel_values": torch.randn(2, 1, 2, 3, 28, 28),
        "aspect_ratio_ids": torch.tensor([[1], [2]]),
        "aspect_ratio_mask": torch.ones(2, 1, 2, dtype=torch.long),
    }
    return model, inputs


def _step(model, inputs, layer_calls):
    model.train()
    model.zero_grad(set_to_none=True)
    before = sum(layer_calls)
    model(**inputs).last_hidden_state.pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, sum(layer_calls) - before


def _count_layer_internals(model):
    calls = [0]
    for module in model.modules():
        if type(module).__name__ == "MllamaVisionEncoderLayer":
            first = next(module.children())
            first.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_mllama_vision_encoder_transformers_flag_is_a_no_op_gcshim_is_not():
    model, inputs = _mllama_vision()
    calls = _count_layer_internals(model)
    reference, plain_calls = _step(copy.deepcopy(model), inputs, [0])
    _, plain_calls = _step(model, inputs, calls)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()
    _, flagged_calls = _step(model, inputs, calls)
    assert flagged_calls == plain_calls  # transformers' flag is set and recomputes nothing

    handle = gcshim.apply(model)  # the table knows the flag is inert for these layers
    vision_layers = [p for p in handle.layers if "transformer.layers" in p]
    assert vision_layers, handle.report()
    assert {find_adapter(model.get_submodule(p)).transformers_checkpointing
            for p in vision_layers} == {"no-op"}
    grads, gcshim_calls = _step(model, inputs, calls)
    assert gcshim_calls > plain_calls
    for name, grad in reference.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_gpt_bigcode_row_is_a_no_op_on_4_55_to_4_57(monkeypatch):
    from packaging.version import Version

    from gcshim.adapters import versions

    class GPTBigCodeBlock(torch.nn.Module):
        pass

    GPTBigCodeBlock.__module__ = "transformers.models.gpt_bigcode.modeling_gpt_bigcode"
    verdicts = {}
    for version in ("4.44.2", "4.57.6", "5.0.0"):
        monkeypatch.setattr(versions, "installed_version",
                            lambda package, v=version: Version(v))
        verdicts[version] = find_adapter(GPTBigCodeBlock()).transformers_checkpointing
    assert verdicts == {"4.44.2": "works", "4.57.6": "no-op", "5.0.0": "works"}


# -- transformers' GradientCheckpointingLayer: what transformers itself checkpoints ------------
def _checkpointing_layer_class():
    layers = pytest.importorskip("transformers.modeling_layers")
    base = getattr(layers, "GradientCheckpointingLayer", None)
    if base is None:
        pytest.skip(f"transformers {transformers.__version__} has no GradientCheckpointingLayer")

    class Stage(base):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(8, 8)
            self.outer = torch.nn.Linear(8, 8)

        def forward(self, hidden_states):
            return hidden_states + self.outer(torch.tanh(self.inner(hidden_states)))

    return Stage


def test_a_one_layer_stack_of_transformers_layers_is_found():
    """PP-FormulaNet / SLANeXt style: one GradientCheckpointingLayer, no repeated block and no
    _no_split_modules entry: auto discovery used to raise LookupError."""
    stage_class = _checkpointing_layer_class()

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Linear(8, 8)
            self.stage = stage_class()
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.stage(self.embed(x)))

    torch.manual_seed(0)
    plain = Model()
    model = copy.deepcopy(plain)
    x = torch.randn(4, 8)
    plain(x).pow(2).sum().backward()
    handle = gcshim.apply(model)
    assert handle.layers == ["stage"]
    assert handle.source == "auto: transformers GradientCheckpointingLayer"
    calls = []
    model.stage.inner.register_forward_hook(lambda *_: calls.append(1))
    model(x).pow(2).sum().backward()
    assert len(calls) == 2  # recomputed in backward
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_transformers_layers_inside_a_no_split_block_are_the_finer_choice():
    """HuBERT with stable layer norm style: a _no_split_modules class around the layers would
    make one checkpointed region of what transformers checkpoints layer by layer."""
    stage_class = _checkpointing_layer_class()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(stage_class() for _ in range(3))

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    class Model(torch.nn.Module):
        _no_split_modules = ["Encoder"]

        def __init__(self):
            super().__init__()
            self.encoder = Encoder()

        def forward(self, x):
            return self.encoder(x)

    model = Model()  # a Handle does not keep its model alive
    handle = gcshim.apply(model)
    assert handle.layers == ["encoder.layers.0", "encoder.layers.1", "encoder.layers.2"]


def test_ibert_quantisation_ranges_are_read_by_the_recompute_as_the_forward_read_them(
        reentrant):
    """I-BERT's training forward updates its quantisation ranges (buffers it reassigns) and
    takes its branch and scaling from them: the recompute must read them as they were."""
    from models import assert_exact_and_recomputed, grads_of

    config_class = require_attribute(transformers, "IBertConfig")
    model_class = require_attribute(transformers, "IBertForMaskedLM")
    torch.manual_seed(0)
    config = config_class(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=37, quant_mode=True,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    plain = model_class(config).train()
    model = copy.deepcopy(plain)
    ids = torch.randint(99, (2, 7))

    def step(of):
        of.zero_grad(set_to_none=True)
        of(input_ids=ids).logits.pow(2).mean().backward()

    gcshim.apply(model, use_reentrant=reentrant)
    for _ in range(3):  # the ranges move each step: each step's gradients depend on them
        step(plain)
        assert_exact_and_recomputed(model, lambda: step(model), grads_of(plain), atol=0,
                                    rtol=0)
        for (name, ours), theirs in zip(model.named_buffers(), plain.buffers()):
            torch.testing.assert_close(ours, theirs, msg=name, atol=0, rtol=0)


def test_the_sweep_judges_a_second_step_against_the_plain_second_step():
    """A model whose step updates what its forward reads (I-BERT) has other gradients in its
    second step; gcshim, judged on its second, is compared with the plain second step, and a
    real difference stays wrong."""
    first, second = {"w": torch.ones(2)}, {"w": torch.full((2,), 2.0)}
    reference = {"grads": first, "calls": 1, "peak": 0}

    def ran(grads):
        return lambda: {"grads": grads, "calls": 2, "peak": 0}

    verdict = arch_sweep._verdict(ran(second), reference, ["w"], ran(second))
    assert verdict["status"] == "pass" and verdict["judged_on"] == "second plain step"
    verdict = arch_sweep._verdict(ran({"w": torch.full((2,), 3.0)}), reference, ["w"],
                                  ran(second))
    assert verdict["status"] == "wrong-grads"
    # a stateless model: its second plain step is its first, and the mismatch stands
    verdict = arch_sweep._verdict(ran(second), reference, ["w"], ran(first))
    assert verdict["status"] == "wrong-grads" and "judged_on" not in verdict


def test_float64_rounding_is_judged_against_the_float32_error():
    """A gradient zero in exact arithmetic, behind a huge loss, is rounding noise in both
    precisions (D-FINE's tester: 256 in float32, 2.5e-5 in float64); each gradient's float64
    floor follows its own float32 error, so that noise passes and an error that keeps its
    size does not."""
    want, trainable = {"b": torch.tensor([0.0, 1e-9]), "w": torch.ones(2)}, ["b", "w"]
    float32 = {"b": torch.tensor([256.0, 1e-9]), "w": torch.ones(2)}
    floors = {name: arch_sweep.ROUNDING_SHRINKS * error
              for name, error in arch_sweep.errors_of(want, float32).items()}
    assert floors["w"] == 0.0
    noise = {"b": torch.tensor([2.5e-5, 1e-9]), "w": torch.ones(2)}
    assert arch_sweep.compare(want, noise, trainable) is not None  # the absolute floor: 1e-5
    assert arch_sweep.compare(want, noise, trainable, floors) is None
    kept = {"b": torch.tensor([200.0, 1e-9]), "w": torch.ones(2)}  # as large in float64
    assert arch_sweep.compare(want, kept, trainable, floors) is not None
    elsewhere = {"b": torch.zeros(2), "w": torch.tensor([1.0, 1.01])}  # a floor is per gradient
    assert arch_sweep.compare(want, elsewhere, trainable, floors) is not None


def test_the_sweeps_loss_leaves_out_caches_returned_at_any_depth():
    """A vision-language model returns its language model's output, cache and all, inside its
    own: checkpointing turns that cache off (transformers' own as much as gcshim), so a loss
    through it would call every checkpointed step wrong (InstructBLIP's testers did)."""
    from tools import tester_models, tiny_models

    hidden, key = torch.ones(2, requires_grad=True), torch.ones(3, requires_grad=True)
    output = {"logits": hidden * 2,
              "language_model_outputs": {"logits": hidden * 3, "past_key_values": ((key * 4,),)}}
    found = tiny_models.output_tensors(output)
    assert [t.shape for t in found] == [(2,), (2,)]
    tester_models.weighted_loss(output).backward()
    assert key.grad is None and hidden.grad is not None


# Measured on these tiny configs (transformers 5.24): Xcodec2's checkpointed decoder layers are
# small beside its codec convolutions, which are not layers, so the peak stays where it was.
PEAK_NOT_LOWER = {"Xcodec2Model"}


@pytest.mark.parametrize("name", ["PPFormulaNetForConditionalGeneration",
                                  "SLANeXtForTableRecognition", "Xcodec2Model",
                                  "DiffusionGemmaModel", "CLIPSegForImageSegmentation"])
def test_layers_transformers_checkpoints_in_5x_models_gcshim_checkpoints_too(name, monkeypatch):
    """Each condition of the sweep (both modes, caching off and left on), with a loss through
    every output: gcshim exact, recomputing as much as transformers' own checkpointing."""
    require_attribute(transformers, name)
    from transformers_5x_models import BUILDERS

    from tools import tester_models

    monkeypatch.setattr(arch_sweep, "_LOSS", [tester_models.weighted_loss])
    model, inputs = BUILDERS[name]()
    counter = arch_sweep.CallCounter()
    try:
        record = require_ran(arch_sweep.judge({"arch": name}, model, inputs, counter))
    finally:
        counter.close()
    for condition, entry in record["conditions"].items():
        ours, theirs = entry["gcshim"], entry["transformers"]
        assert ours["status"] == "pass", (name, condition, ours)
        assert ours["recomputed"] > 0
        if theirs["status"] == "pass":
            assert ours["recomputed"] >= theirs["recomputed"], (name, condition)
        if name not in PEAK_NOT_LOWER:
            assert ours["peak_ratio"] < 1.0, (name, condition, ours)


# -- Gemma 3n before 5.6: KV sharing through the cache (tests/kv_sharing_models.py) ----------
def test_gemma3n_kv_sharing_on_the_installed_release_is_checkpointed_exactly():
    import kv_sharing_models

    result = kv_sharing_models.check(reentrant=False)
    if "absent" in result:
        pytest.skip(result["absent"])
    assert not result["wrong"], result
    assert result["patched"] > 0, result
    if kv_sharing_models.SHARES_THROUGH_CACHE:
        assert result["statuses"] == ["skipped: fills a cache its model reads later"], result
        assert result["recomputed"] == 0, result
    else:  # the shared states are an argument: the cache only collects, and is neutralised
        assert result["statuses"] == ["checkpointed"], result
        assert result["recomputed"] == result["patched"], result


@pytest.mark.slow
@pytest.mark.parametrize("target", downstream.releases())
def test_gemma3n_kv_sharing_through_the_cache_runs_as_is_on_older_releases(target):
    """4.57.6 (and 5.0-5.5) read shared keys and values off the cache: gcshim leaves the calls
    that carry one un-checkpointed, says so once, and the gradients are exact; without the
    table's row they would be silently wrong."""
    results = downstream.run_script([sys.executable, str(HERE / "kv_sharing_models.py")],
                                    pythonpath=target)
    if any("absent" in r for r in results):
        pytest.skip(results[0]["absent"])
    *with_row, without_row = results
    for result in with_row:
        assert not result["wrong"], result
        assert result["patched"] > 0, result
        if Version(result["transformers"]).release < (5, 6):
            assert result["statuses"] == ["skipped: fills a cache its model reads later"]
            assert result["recomputed"] == 0, result  # run as they are, by design
        else:
            assert result["recomputed"] == result["patched"], result
            assert result["adapters"] == [
                "transformers Gemma 3n text (<5.6: KV sharing through the cache)"]
    if Version(without_row["transformers"]).release < (5, 6):
        assert without_row["wrong"], without_row  # what the row is there for
        assert any("train with use_cache=False" in w for r in with_row for w in r["warnings"])

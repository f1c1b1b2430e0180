"""Checkpoint options: validation against the installed torch, and passthrough."""

import pytest
import torch
from models import RopeLikeModel

import gcshim
from gcshim.core import torch_checkpoint as ckpt


@pytest.mark.parametrize("name", ["use_reentrant", "preserve_rng_state"])
@pytest.mark.parametrize("bad", [1, 0, "True", None])
def test_flags_must_be_bools(name, bad):
    with pytest.raises(TypeError, match=name):
        gcshim.apply(RopeLikeModel(), **{name: bad})


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="unknown checkpoint option 'preserve_rng'"):
        gcshim.apply(RopeLikeModel(), preserve_rng=True)


def test_option_missing_from_installed_torch_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(ckpt, "supported_options",
                        lambda: frozenset({"use_reentrant", "preserve_rng_state"}))
    with pytest.raises(gcshim.UnsupportedOptionError, match=r"'context_fn' needs torch>=2.1"):
        gcshim.apply(RopeLikeModel(), context_fn=lambda: None)


def test_supported_options_follow_the_installed_signature():
    import inspect

    params = inspect.signature(torch.utils.checkpoint.checkpoint).parameters
    options = gcshim.supported_options()
    assert {"use_reentrant", "preserve_rng_state"} <= options
    for name in ("context_fn", "determinism_check", "debug", "early_stop"):
        assert (name in options) == (name in params)


def _require(name):
    if name not in gcshim.supported_options():
        pytest.skip(f"torch {torch.__version__} has no {name}")


def test_context_fn_is_passed_through():
    _require("context_fn")
    import contextlib

    calls = []

    def context_fn():
        calls.append(1)
        return contextlib.nullcontext(), contextlib.nullcontext()

    model = RopeLikeModel().train()
    gcshim.apply(model, context_fn=context_fn)
    model(torch.randint(32, (2, 3))).backward()
    assert len(calls) == 3


def test_non_reentrant_only_options_refuse_reentrant():
    _require("context_fn")
    with pytest.raises(ValueError, match="only with use_reentrant=False"):
        gcshim.apply(RopeLikeModel(), use_reentrant=True, context_fn=lambda: None)


@pytest.mark.parametrize("value", ["sometimes", 1])
def test_determinism_check_values(value):
    _require("determinism_check")
    with pytest.raises(TypeError, match="determinism_check"):
        gcshim.apply(RopeLikeModel(), determinism_check=value)


def test_early_stop_false_recomputes_the_whole_layer():
    _require("early_stop")

    model = RopeLikeModel().train()
    last_calls = []
    for layer in model.layers:
        layer.second.register_forward_hook(lambda *_: last_calls.append(1))
    gcshim.apply(model, early_stop=False)
    model(torch.randint(32, (2, 3))).backward()
    assert len(last_calls) == 6  # with torch's default early stop the last op may not rerun


def test_options_are_recorded_and_reported():
    model = RopeLikeModel()
    gcshim.apply(model, use_reentrant=True, preserve_rng_state=False)
    options = vars(model.layers[0])["forward"].gcshim_call.options
    assert options.use_reentrant is True and options.preserve_rng_state is False


def _noop_contexts():
    import contextlib

    return contextlib.nullcontext(), contextlib.nullcontext()


@pytest.mark.parametrize(
    "name, value",
    [("context_fn", _noop_contexts), ("determinism_check", "none"), ("debug", False),
     ("early_stop", True), ("respect_saved_tensors_hooks", None)],
)
def test_each_option_works_or_is_refused_on_the_installed_torch(name, value):
    model = RopeLikeModel().train()
    if name not in gcshim.supported_options():
        with pytest.raises(gcshim.UnsupportedOptionError, match=name):
            gcshim.apply(model, **{name: value})
        return
    gcshim.apply(model, **{name: value})
    model(torch.randint(32, (2, 3))).backward()
    assert model.layers[0].first_calls == 2

"""Stateful layers under gcshim with `use_cache` left on, as a legacy training script leaves it:
recurrent state carried in a cache object (Mamba, Mamba2, FalconMamba, the hybrids Jamba, Zamba,
Zamba2), on the layer's own modules (RecurrentGemma) or in tensors its stack writes into after
the call (xLSTM).

`check(arch, reentrant)` trains two steps of a tiny model with `use_cache=True` under
`gcshim.apply` and compares loss and every gradient with the un-checkpointed steps, counts the
layers' forward runs and measures the peak. Run as a script it prints one JSON line per
(arch, mode) for the installed transformers (the tests run it against other releases in a
subprocess). An architecture this release lacks, cannot build at the tiny sizes, or whose plain
step fails, says so.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any, Callable, Dict, List, Tuple

import torch
import transformers
from downstream import Counter, compare
from models import grads_of
from torch import nn

import gcshim
from gcshim.budget.memory import peak_bytes

VOCAB, BATCH, SEQ = 64, 2, 16


def _xlstm(**fields: Any) -> nn.Module:
    from transformers.models.xlstm.configuration_xlstm import xLSTMConfig
    from transformers.models.xlstm.modeling_xlstm import xLSTMForCausalLM

    return xLSTMForCausalLM(xLSTMConfig(**fields))


def _class(name: str) -> Callable[..., Any]:
    return getattr(transformers, name)


# (model class, config class, config fields, path of the layer list)
SMALL = dict(vocab_size=VOCAB, hidden_size=32)
MAMBA = dict(SMALL, state_size=8, num_hidden_layers=3, expand=2, conv_kernel=3)
HYBRID = dict(SMALL, intermediate_size=48, num_attention_heads=4, num_key_value_heads=4,
              mamba_d_state=8, mamba_d_conv=3, mamba_expand=2, use_mamba_kernels=False)
ARCHS: Dict[str, Tuple[str, str, Dict[str, Any], str]] = {
    "recurrent_gemma": ("RecurrentGemmaForCausalLM", "RecurrentGemmaConfig", dict(
        SMALL, num_hidden_layers=3, intermediate_size=48, num_attention_heads=4,
        num_key_value_heads=2, lru_width=32, attention_window_size=8, conv1d_width=3,
        logits_soft_cap=30.0, head_dim=8,
        block_types=["recurrent", "recurrent", "attention"]), "model.layers"),
    "mamba": ("MambaForCausalLM", "MambaConfig", MAMBA, "backbone.layers"),
    "mamba2": ("Mamba2ForCausalLM", "Mamba2Config", dict(
        MAMBA, num_heads=8, head_dim=8, n_groups=1, chunk_size=8), "backbone.layers"),
    "falcon_mamba": ("FalconMambaForCausalLM", "FalconMambaConfig", MAMBA, "backbone.layers"),
    "jamba": ("JambaForCausalLM", "JambaConfig", dict(
        HYBRID, num_hidden_layers=4, num_key_value_heads=2, attn_layer_period=2,
        attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1, num_experts=2,
        mamba_dt_rank=4), "model.layers"),
    # Zamba ties its shared attention block across hybrid layers: 12 layers hold two
    "zamba": ("ZambaForCausalLM", "ZambaConfig", dict(
        HYBRID, num_hidden_layers=12, attention_head_dim=16, mamba_dt_rank=4,
        n_mamba_heads=2), "model.layers"),
    "zamba2": ("Zamba2ForCausalLM", "Zamba2Config", dict(
        HYBRID, num_hidden_layers=6, attention_head_dim=16, mamba_headdim=8, n_mamba_heads=8,
        use_mem_rope=False,
        layers_block_type=["mamba", "mamba", "hybrid", "mamba", "mamba", "hybrid"]),
        "model.layers"),
    # the tester's sizes: the chunked kernel needs them
    "xlstm": ("xLSTMForCausalLM", "xLSTMConfig", dict(
        vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2, num_heads=2,
        qk_dim_factor=0.5, v_dim_factor=1.0, tie_word_embeddings=False), "backbone.blocks"),
}


def build(arch: str) -> Tuple[nn.Module, List[nn.Module]]:
    """A tiny model of `arch` (ImportError/AttributeError where this release lacks it)."""
    model_name, config_name, fields, layers = ARCHS[arch]
    torch.manual_seed(0)
    if arch == "xlstm":
        model = _xlstm(**fields)
    else:
        model = _class(model_name)(_class(config_name)(**fields))
    return model.train(), list(model.get_submodule(layers))


def _steps(model: nn.Module, steps: int = 2) -> Tuple[List[float], Dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (BATCH, SEQ), generator=generator)
    weight = torch.randn(BATCH, SEQ, VOCAB, generator=generator)
    losses = []
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        output = model(input_ids=ids, labels=ids, use_cache=True)
        loss = output.loss + (output.logits * weight).sum() * 1e-2
        loss.backward()
        losses.append(loss.item())
    return losses, grads_of(model)


def check(arch: str, reentrant: bool) -> Dict[str, Any]:
    """One architecture in one mode (see module doc)."""
    result: Dict[str, Any] = {"arch": arch, "reentrant": reentrant,
                              "transformers": transformers.__version__}
    try:
        plain, _ = build(arch)
        model, layers = build(arch)
    except (ImportError, AttributeError) as error:
        result["absent"] = f"{type(error).__name__}: {error}"[:200]
        return result
    except Exception as error:  # this release's config or model rejects the tiny sizes
        result["no_build"] = f"{type(error).__name__}: {error}"[:200]
        return result
    model.load_state_dict(plain.state_dict())
    try:
        reference = _steps(plain)
    except Exception as error:  # transformers' own training step fails: nothing to compare
        result["no_baseline"] = f"{type(error).__name__}: {error}"[:300]
        return result
    result["peak_plain"] = peak_bytes(lambda: _steps(plain, 1), torch.device("cpu"))
    counter = Counter(layers)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gcshim.apply(model, use_reentrant=reentrant)
            trained = _steps(model)
        result["runs"] = list(counter.runs)
    except Exception as error:  # recorded: the test says which arch and mode failed
        result["error"] = f"{type(error).__name__}: {error}"[:500]
        return result
    result["warnings"] = sorted({str(w.message) for w in caught
                                 if issubclass(w.category, gcshim.GcshimWarning)})
    compare(result, reference, trained)
    result["peak"] = peak_bytes(lambda: _steps(model, 1), torch.device("cpu"))
    result["report"] = str(gcshim.report(model))
    return result


def passed(result: Dict[str, Any]) -> bool:
    """Absent or no baseline on this release (said, not hidden); else loss and every gradient
    as without checkpointing, each layer run at least twice a step, a lower peak, and a warning
    only where reentrant checkpointing gave way to non-reentrant."""
    if "absent" in result or "no_build" in result or "no_baseline" in result:
        return True
    if "error" in result:
        return False
    fallbacks_only = all("checkpoints this layer non-reentrant" in w
                         for w in result["warnings"])
    return (result["loss_equal"] and not result["missing"] and not result["wrong"]
            and min(result["runs"]) >= 4 and result["peak"] < result["peak_plain"]
            and fallbacks_only and (result["reentrant"] or not result["warnings"]))


def main(argv: List[str]) -> None:
    """Architectures named in argv (default all), in both modes."""
    for arch in argv or list(ARCHS):
        for reentrant in (False, True):
            print(json.dumps(check(arch, reentrant)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

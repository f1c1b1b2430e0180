"""PEFT prefix tuning under gcshim: the learned prefix reaches every attention layer through the
cache argument, so the cache is the layers' input and must be kept (see gcshim.core.caches).

`check(arch, entry)` builds a tiny model of `arch` the way PEFT users do (`get_peft_model` with a
`PrefixTuningConfig`), trains two steps through one way into gcshim (tests/downstream.py's
entries) and compares loss and every trainable gradient with the un-checkpointed steps, counts
the recomputes of the layers that read the prefix and measures the peak. The loss reaches every
floating output, the returned cache included, through a fixed random weight. Run as a script it
prints one JSON line per (arch, entry) for the installed transformers and PEFT (the tests run it
against other releases in a subprocess).
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, List, Tuple

import peft
import torch
import transformers
from downstream import ENTRIES, Counter, _inner, compare, train_through
from models import grads_of
from torch import nn

import gcshim
from gcshim.budget.memory import peak_bytes

WIDTH, LAYERS, BATCH, SEQ, VOCAB, VIRTUAL = 32, 4, 2, 48, 61, 5
# Mistral with a sliding window shorter than the sequence, Gemma2 with sliding and global
# layers: the caches the sliding windows make
ARCHS = ("llama", "qwen2", "mistral", "gemma2", "t5", "bart")
# prefix tuning of these works without checkpointing on every release tested; the others may
# not (PEFT 0.18.1 cannot build Gemma2's prefix on transformers 4.57.6), which is recorded
REQUIRED = ("llama", "qwen2", "t5", "bart")


def build(arch: str) -> Tuple[nn.Module, List[nn.Module]]:
    """A prefix-tuned tiny model, and the layers that read the prefix."""
    torch.manual_seed(0)
    small = dict(vocab_size=VOCAB, pad_token_id=0)
    if arch in ("llama", "qwen2", "mistral", "gemma2"):
        config_class, model_class, extra = {
            "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
            "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
            "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM,
                        dict(sliding_window=SEQ // 3)),
            "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
                       dict(sliding_window=SEQ // 3, head_dim=8)),
        }[arch]
        base = model_class(config_class(
            hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=LAYERS,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            **small, **extra))
        task = "CAUSAL_LM"
    elif arch == "t5":
        base = transformers.T5ForConditionalGeneration(transformers.T5Config(
            d_model=WIDTH, d_ff=256, num_layers=LAYERS, num_decoder_layers=LAYERS, num_heads=4,
            d_kv=8, dropout_rate=0.0, decoder_start_token_id=0, **small))
        task = "SEQ_2_SEQ_LM"
    else:
        base = transformers.BartForConditionalGeneration(transformers.BartConfig(
            d_model=WIDTH, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_layers=LAYERS,
            decoder_layers=LAYERS, encoder_attention_heads=4, decoder_attention_heads=4,
            max_position_embeddings=128, dropout=0.0, attention_dropout=0.0,
            activation_dropout=0.0, **small))
        task = "SEQ_2_SEQ_LM"
    model = peft.get_peft_model(base, peft.PrefixTuningConfig(task_type=task,
                                                               num_virtual_tokens=VIRTUAL))
    stack = base.get_decoder() if task == "SEQ_2_SEQ_LM" else base.model
    layers = list(getattr(stack, "layers", None) or stack.block)
    return model.train(), layers


class _Called(nn.Module):
    """Stands for a layer in a Counter: its first child that runs on every forward (a T5Block
    keeps its sublayers in a ModuleList, whose own hooks never run)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        child = next(layer.children())
        while isinstance(child, (nn.ModuleList, nn.ModuleDict)):
            child = next(child.children())
        self.child = child


def _cache_tensors(cache: Any) -> List[torch.Tensor]:
    """The tensors of a returned cache, whichever class or release made it."""
    if cache is None:
        return []
    if hasattr(cache, "to_legacy_cache"):
        cache = cache.to_legacy_cache()
    if isinstance(cache, torch.Tensor):
        return [cache]
    if isinstance(cache, (tuple, list)):
        return [t for item in cache for t in _cache_tensors(item)]
    return []


def _loss(output: Any, weights: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The LM loss plus every floating output through a fixed random weight."""
    total = output.loss
    tensors = [("logits", output.logits)]
    tensors += [(f"cache{i}", t) for i, t in enumerate(_cache_tensors(
        getattr(output, "past_key_values", None)))]
    for tag, tensor in tensors:
        if tensor.is_floating_point():
            if tag not in weights:
                generator = torch.Generator().manual_seed(len(weights) + 7)
                weights[tag] = torch.randn(tensor.shape, generator=generator)
            total = total + (tensor * weights[tag]).sum() * 1e-2
    return total


def _steps(model: nn.Module, steps: int = 2) -> Tuple[List[float], Dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (BATCH, SEQ), generator=generator)
    labels = torch.randint(1, VOCAB, (BATCH, SEQ), generator=generator)
    seq2seq = "Seq2Seq" in type(model).__name__
    weights: Dict[str, torch.Tensor] = {}
    losses = []
    for _ in range(steps):
        model.zero_grad()
        output = model(input_ids=ids, labels=labels if seq2seq else ids, use_cache=True)
        loss = _loss(output, weights)
        loss.backward()
        losses.append(loss.item())
    return losses, grads_of(model)


def check(arch: str, entry: str) -> Dict[str, Any]:
    """One architecture through one way in (see module doc)."""
    result: Dict[str, Any] = {"arch": arch, "entry": entry,
                              "transformers": transformers.__version__,
                              "peft": peft.__version__}
    try:
        plain, _ = build(arch)
        model, layers = build(arch)
        model.load_state_dict(plain.state_dict())
        if entry.startswith("enable"):
            plain.enable_input_require_grads()  # as _enter does (what Trainer does for PEFT)
        reference = _steps(plain)
    except Exception as error:  # this PEFT and transformers cannot prefix-tune it at all
        result["no_baseline"] = f"{type(error).__name__}: {error}"[:300]
        return result
    result["peak_plain"] = peak_bytes(lambda: _steps(plain, 1), torch.device("cpu"))
    counter = Counter([_Called(layer) for layer in layers])
    trained = train_through(model, entry, counter, _steps, result)
    if trained is None:
        return result
    compare(result, reference, trained)
    result["trainable"] = sorted(reference[1])
    result["peak"] = peak_bytes(lambda: _steps(model, 1), torch.device("cpu"))
    result["report"] = str(gcshim.report(_inner(model))) if gcshim.is_applied(
        _inner(model)) else "not applied"
    return result


def passed(result: Dict[str, Any]) -> bool:
    """Loss and every trainable gradient as without checkpointing (the prefix's among them),
    each prefix-reading layer run twice a step (once more in the first step where gcshim
    checks reentrant's forward), and a lower peak; or, outside REQUIRED, a release whose plain
    prefix-tuning step fails (said in the result)."""
    if "no_baseline" in result:
        return result["arch"] not in REQUIRED
    if "error" in result:
        return False
    checked = 1 if result["entry"] == "apply-reentrant" else 0
    return (result["loss_equal"] and not result["missing"] and not result["wrong"]
            and any("prompt_encoder" in name for name in result["trainable"])
            and result["runs"] == [4 + checked] * LAYERS
            and result["peak"] < result["peak_plain"])


def main(argv: List[str]) -> None:
    """Architectures named in argv (default all), through every entry."""
    for arch in argv or ARCHS:
        for entry in ENTRIES:
            print(json.dumps(check(arch, entry)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

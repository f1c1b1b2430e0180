"""Downstream code built on transformers layers, as research code builds it: our own minimal
models, one per pattern (subclassed layers, copied old blocks, stacks with their own
checkpointing, odd outputs, state), each a `PreTrainedModel` a training script would call
`gradient_checkpointing_enable()` on.

`check(pattern, entry)` trains two steps through one way into gcshim and compares loss and
every gradient with the un-checkpointed steps, counts the layers' recomputes and measures the
peak. Run as a script it prints one JSON line per (pattern, entry) for the installed
transformers (the tests run it against other releases in a subprocess, and under
`python -m gcshim run`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import transformers
from models import grads_of
from torch import nn
from transformers import LlamaConfig, PreTrainedModel
from transformers.models.llama import modeling_llama

import gcshim
from gcshim.budget.memory import peak_bytes

WIDTH, LAYERS, BATCH, SEQ, VOCAB = 32, 3, 2, 24, 61


def config() -> LlamaConfig:
    return LlamaConfig(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=48,
                       num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=64, pad_token_id=0)


def _hidden(output: Any) -> torch.Tensor:
    """A transformers layer's hidden states: a tuple before 4.54, the tensor after."""
    return output[0] if isinstance(output, tuple) else output


class Counter:
    """Counts forward runs of each layer (twice a step when checkpointed), by the calls of its
    first sub-module (a patched layer's recompute calls its forward, not its hooks)."""

    def __init__(self, layers: List[nn.Module]) -> None:
        self.runs = [0] * len(layers)
        for index, layer in enumerate(layers):
            next(layer.children()).register_forward_pre_hook(self._hook(index))

    def _hook(self, index: int) -> Callable[..., None]:
        def count(*_: Any) -> None:
            self.runs[index] += 1
        return count


class CorpusModel(PreTrainedModel):
    """The shared frame: embeddings, a stack the pattern defines, a head."""

    config_class = LlamaConfig
    base_model_prefix = "corpus"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    pattern = ""
    checkpoints_itself = False  # the plain model already checkpoints: no lower peak to expect

    layer_class: Any = modeling_llama.LlamaDecoderLayer  # built as layer_class(cfg, index)

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.rotary = modeling_llama.LlamaRotaryEmbedding(config=cfg)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.gradient_checkpointing = False
        self.layers = nn.ModuleList(self.layer_class(cfg, index)
                                    for index in range(cfg.num_hidden_layers))
        self.add_parts(cfg)
        self.post_init()

    def add_parts(self, cfg: LlamaConfig) -> None:
        """What a pattern's model has beside the frame and its layers."""

    # a container or state object made for each forward and passed to every layer
    side_argument: Optional[str] = None

    def new_side(self, hidden: torch.Tensor) -> Any:
        return None

    def outputs(self, hidden: torch.Tensor, side: Any) -> Dict[str, Any]:
        return {"logits": self.head(hidden)}

    def forward(self, input_ids: torch.Tensor) -> Dict[str, Any]:
        h = self.embed(input_ids)
        side = self.new_side(h)
        extra = {self.side_argument: side} if self.side_argument else {}
        for layer in self.layers:
            h = _hidden(layer(h, **extra, **self.layer_kwargs(h)))
        return self.outputs(h, side)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, 0.2)

    def rope(self, hidden: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(hidden.shape[1]).unsqueeze(0)
        return self.rotary(hidden, positions)

    def layer_kwargs(self, hidden: torch.Tensor) -> Dict[str, Any]:
        return {"attention_mask": None, "position_embeddings": self.rope(hidden),
                "position_ids": torch.arange(hidden.shape[1]).unsqueeze(0)}


# -- 1. a subclassed layer taking a learned gate by keyword ----------------------------------
class GatedLayer(modeling_llama.LlamaDecoderLayer):
    def forward(self, hidden_states, gate=None, **kwargs):  # noqa: D102
        out = _hidden(super().forward(hidden_states, **kwargs))
        return out * torch.sigmoid(gate)


class KeywordGate(CorpusModel):
    pattern = "subclassed layer, learned gate by keyword"
    layer_class = GatedLayer

    def add_parts(self, cfg):
        self.gate = nn.Parameter(torch.ones(cfg.hidden_size))

    def forward(self, input_ids):
        h = self.embed(input_ids)
        for layer in self.layers:
            h = layer(h, gate=self.gate, **self.layer_kwargs(h))
        return {"logits": self.head(h)}


# -- 2. a copy of an old T5-style block in a stack that still caches --------------------------
class CopiedT5Block(nn.Module):
    """Returns (hidden, present_key_value, position_bias) when caching, (hidden,
    position_bias) when not: the layout of T5 blocks in transformers 4.4x."""

    def __init__(self, cfg, index: int):
        super().__init__()
        has_bias = index == 0  # the first block owns the relative position bias
        self.q = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)
        self.k = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)
        self.v = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)
        self.o = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)
        self.ff = nn.Sequential(nn.Linear(cfg.hidden_size, 48), nn.ReLU(),
                                nn.Linear(48, cfg.hidden_size))
        self.bias = nn.Embedding(8, 1) if has_bias else None

    def forward(self, hidden_states, position_bias=None, past_key_value=None, use_cache=False):
        q, k, v = self.q(hidden_states), self.k(hidden_states), self.v(hidden_states)
        if past_key_value is not None:
            k = torch.cat([past_key_value[0], k], dim=1)
            v = torch.cat([past_key_value[1], v], dim=1)
        if position_bias is None:
            distance = torch.arange(k.shape[1])[None, :] - torch.arange(q.shape[1])[:, None]
            position_bias = self.bias(distance.clamp(-4, 3) + 4).squeeze(-1)
        scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5 + position_bias
        hidden_states = hidden_states + self.o(torch.softmax(scores, -1) @ v)
        hidden_states = hidden_states + self.ff(hidden_states)
        present = (k, v) if use_cache else None
        if use_cache:
            return hidden_states, present, position_bias
        return hidden_states, position_bias


class CopiedT5(CorpusModel):
    pattern = "copied old T5 block (cache at index 1) in a caching stack"
    layer_class = CopiedT5Block

    def forward(self, input_ids, use_cache=True):
        h = self.embed(input_ids)
        bias, presents = None, ()
        for layer in self.layers:
            out = layer(h, position_bias=bias, use_cache=use_cache)
            h = out[0]
            if use_cache:
                presents += (out[1],)
                bias = out[2]
            else:
                bias = out[1]
        return {"logits": self.head(h), "presents": presents}


# -- 3. a stack with the copied `_gradient_checkpointing_func` branch ---------------------------
class CopiedBranch(KeywordGate):
    pattern = "stack with transformers' checkpoint branch copied, extra input by keyword"

    def forward(self, input_ids):
        h = self.embed(input_ids)
        for layer in self.layers:
            kwargs = self.layer_kwargs(h)
            if self.gradient_checkpointing and self.training:
                call = self._gradient_checkpointing_func

                def run(hidden, gate, layer=layer, kwargs=kwargs):
                    return layer(hidden, gate=gate, **kwargs)

                h = call(run, h, self.gate)
            else:
                h = layer(h, gate=self.gate, **kwargs)
        return {"logits": self.head(h)}


# -- 4. a stack that calls torch.utils.checkpoint itself ------------------------------------
class OwnCheckpoint(CorpusModel):
    pattern = "stack calling torch.utils.checkpoint itself"
    checkpoints_itself = True


    def forward(self, input_ids):
        h = self.embed(input_ids)
        for layer in self.layers:
            kwargs = self.layer_kwargs(h)
            if self.training:
                h = _hidden(torch.utils.checkpoint.checkpoint(
                    layer, h, use_reentrant=False, **kwargs))
            else:
                h = _hidden(layer(h, **kwargs))
        return {"logits": self.head(h)}


# -- 5. layers returning a dataclass, 6. a dict -----------------------------------------------
@dataclasses.dataclass
class LayerOutput:
    hidden: torch.Tensor
    aux: torch.Tensor


class DataclassLayer(modeling_llama.LlamaDecoderLayer):
    def forward(self, hidden_states, **kwargs):  # noqa: D102
        out = _hidden(super().forward(hidden_states, **kwargs))
        return LayerOutput(out, out.pow(2).mean())


class DictLayer(modeling_llama.LlamaDecoderLayer):
    def forward(self, hidden_states, **kwargs):  # noqa: D102
        out = _hidden(super().forward(hidden_states, **kwargs))
        return {"hidden": out, "aux": out.abs().mean()}


class StructuredOutputs(CorpusModel):
    def forward(self, input_ids):
        h = self.embed(input_ids)
        aux = h.new_zeros(())
        for layer in self.layers:
            out = layer(h, **self.layer_kwargs(h))
            if isinstance(out, dict):
                h, extra = out["hidden"], out["aux"]
            else:
                h, extra = out.hidden, out.aux
            aux = aux + extra
        return {"logits": self.head(h), "aux": aux}


class DataclassOutputs(StructuredOutputs):
    pattern = "layer returning a dataclass"
    layer_class = DataclassLayer


class DictOutputs(StructuredOutputs):
    pattern = "layer returning a dict"
    layer_class = DictLayer


# -- 7. router logits kept on the layer for an auxiliary loss --------------------------------
class RouterLayer(modeling_llama.LlamaDecoderLayer):
    def __init__(self, cfg, index):
        super().__init__(cfg, index)
        self.router = nn.Linear(cfg.hidden_size, 4, bias=False)

    def forward(self, hidden_states, **kwargs):  # noqa: D102
        self.router_logits = self.router(hidden_states)
        return _hidden(super().forward(hidden_states, **kwargs))


class RouterOnAttribute(CorpusModel):
    pattern = "router logits stored on the layer for an auxiliary loss"

    layer_class = RouterLayer

    def forward(self, input_ids):
        h = self.embed(input_ids)
        aux = h.new_zeros(())
        for layer in self.layers:
            h = layer(h, **self.layer_kwargs(h))
            aux = aux + torch.logsumexp(layer.router_logits, -1).pow(2).mean()
        return {"logits": self.head(h), "aux": aux}


# -- 8. auxiliary losses appended to a list passed in ------------------------------------------
class AuxListLayer(modeling_llama.LlamaDecoderLayer):
    def forward(self, hidden_states, aux_losses=None, **kwargs):  # noqa: D102
        out = _hidden(super().forward(hidden_states, **kwargs))
        aux_losses.append(out.var(-1).mean())
        return out


class AuxLossList(CorpusModel):
    pattern = "auxiliary losses appended to a list passed in"

    layer_class = AuxListLayer
    side_argument = "aux_losses"

    def new_side(self, hidden):
        return []

    def outputs(self, hidden, side):
        return {"logits": self.head(hidden), "aux": torch.stack(side).sum()}


# -- 9. cross-layer KV sharing through a dict ------------------------------------------------
class SharingLayer(modeling_llama.LlamaDecoderLayer):
    def forward(self, hidden_states, shared=None, **kwargs):  # noqa: D102
        out = _hidden(super().forward(hidden_states, **kwargs))
        if "memory" in shared:
            out = out + 0.5 * shared["memory"]
        else:
            shared["memory"] = torch.tanh(out)
        return out


class SharedDict(CorpusModel):
    pattern = "first layer's states shared with later layers through a dict"

    layer_class = SharingLayer
    side_argument = "shared"

    def new_side(self, hidden):
        return {}


# -- 10. a layer with `**kwargs` only, tensors (a tuple among them) by keyword ----------------
class KwargsOnlyLayer(modeling_llama.LlamaDecoderLayer):
    def forward(self, **kwargs):  # noqa: D102
        hidden = kwargs.pop("hidden_states")
        scale, shift = kwargs.pop("film")
        out = _hidden(super().forward(hidden, **kwargs))
        return out * scale + shift


class KwargsOnly(CorpusModel):
    pattern = "layer taking only **kwargs, a (scale, shift) tuple by keyword"
    layer_class = KwargsOnlyLayer

    def add_parts(self, cfg):
        self.film = nn.Linear(cfg.hidden_size, 2 * cfg.hidden_size)

    def forward(self, input_ids):
        h = self.embed(input_ids)
        scale, shift = self.film(h.mean(1, keepdim=True)).chunk(2, -1)
        for layer in self.layers:
            h = layer(hidden_states=h, film=(scale, shift), **self.layer_kwargs(h))
        return {"logits": self.head(h)}


# -- 11. recurrent memory carried in a state object ------------------------------------------
class Memory:
    """The caller's state object: one tensor the layers read and update in place."""

    def __init__(self, width: int) -> None:
        self.value = torch.zeros(width)


class MemoryLayer(modeling_llama.LlamaDecoderLayer):
    def forward(self, hidden_states, memory=None, **kwargs):  # noqa: D102
        out = _hidden(super().forward(hidden_states + memory.value, **kwargs))
        with torch.no_grad():
            memory.value.add_(out.detach().mean((0, 1)))  # a running summary, not trained
        return out


class StateObject(CorpusModel):
    pattern = "recurrent memory in a state object, updated in place"

    layer_class = MemoryLayer
    side_argument = "memory"

    def new_side(self, hidden):
        return Memory(hidden.shape[-1])


# -- 12. LoRA on frozen layers (PEFT) -----------------------------------------------------------
class LoraStack(CorpusModel):
    pattern = "PEFT LoRA on a frozen model"


def _lora(model: nn.Module) -> Optional[nn.Module]:
    try:
        import peft
    except ImportError:
        return None
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                           lora_dropout=0.0)
    wrapped = peft.get_peft_model(model, lora)
    return wrapped


PATTERNS: Dict[str, type] = {cls.__name__: cls for cls in (
    KeywordGate, CopiedT5, CopiedBranch, OwnCheckpoint, DataclassOutputs, DictOutputs,
    RouterOnAttribute, AuxLossList, SharedDict, KwargsOnly, StateObject, LoraStack)}
ENTRIES = ("apply", "apply-reentrant", "enable", "enable-non-reentrant")


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = PATTERNS[name](config())
    model.train()
    if name == "LoraStack":
        wrapped = _lora(model)
        if wrapped is None:
            raise ImportError("peft is not installed")
        return wrapped
    return model


def _inner(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _loss(output: Dict[str, Any], weights: Dict[str, torch.Tensor]) -> torch.Tensor:
    """A loss reaching every floating output through a fixed random weight."""
    total = output["logits"].new_zeros(())
    for key, value in output.items():
        tensors = [value] if isinstance(value, torch.Tensor) else [
            t for pair in value for t in pair]
        for index, tensor in enumerate(tensors):
            if not tensor.is_floating_point():
                continue
            tag = f"{key}{index}"
            if tag not in weights:
                generator = torch.Generator().manual_seed(len(weights) + 7)
                weights[tag] = torch.randn(tensor.shape, generator=generator)
            total = total + (tensor * weights[tag]).sum()
    return total


def _steps(model: nn.Module, steps: int = 2) -> Tuple[List[float], Dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (BATCH, SEQ), generator=generator)
    weights: Dict[str, torch.Tensor] = {}
    losses = []
    for _ in range(steps):
        model.zero_grad()
        loss = _loss(model(input_ids=ids), weights)
        loss.backward()
        losses.append(loss.item())
    return losses, grads_of(model)


def _peak(model: nn.Module) -> int:
    return peak_bytes(lambda: _steps(model, 1), torch.device("cpu"))


def _enter(model: nn.Module, entry: str) -> None:
    if entry == "apply":
        gcshim.apply(_inner(model))
    elif entry == "apply-reentrant":
        gcshim.apply(_inner(model), use_reentrant=True)
    elif entry == "enable":
        model.gradient_checkpointing_enable()
    elif entry == "enable-non-reentrant":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if entry.startswith("enable") and model is not _inner(model):
        model.enable_input_require_grads()  # what Trainer does for PEFT models


def _auto_is_on() -> bool:
    from gcshim.entry import activation  # on under `gcshim run` too, without gcshim.auto

    return activation.is_active()


def _auto_on() -> bool:
    """`import gcshim.auto`, as the one-line way in does (False: already on, as under
    `python -m gcshim run`)."""
    from gcshim import auto

    return auto.activate()


def _auto_off() -> None:
    from gcshim import auto

    auto.deactivate()


Trained = Tuple[List[float], Dict[str, torch.Tensor]]  # losses, gradients


def train_through(model: nn.Module, entry: str, counter: Counter,
                  steps: Callable[[nn.Module], Trained], result: Dict[str, Any]
                  ) -> Optional[Trained]:
    """`steps(model)` through one way in; `result` gets each layer's forward runs, or the
    error (None then: the test says which model and way in failed)."""
    routed = entry.startswith("enable") and _auto_on()
    try:
        _enter(model, entry)
        trained = steps(model)
        result["runs"] = list(counter.runs)
        return trained
    except Exception as error:
        result["error"] = f"{type(error).__name__}: {error}"[:500]
        return None
    finally:
        if routed:
            _auto_off()


def compare(result: Dict[str, Any], reference: Trained, trained: Trained) -> None:
    """Into `result`: whether every loss, and which gradients, differ from the plain steps."""
    (reference_losses, reference_grads), (losses, grads) = reference, trained
    result["loss_equal"] = all(abs(a - b) <= 1e-5 * max(1.0, abs(b))
                               for a, b in zip(losses, reference_losses))
    result["missing"] = sorted(set(reference_grads) ^ set(grads))
    result["wrong"] = sorted(n for n in reference_grads if n in grads and not torch.allclose(
        grads[n], reference_grads[n], rtol=1e-4, atol=1e-6))


def check(name: str, entry: str) -> Dict[str, Any]:
    """One pattern through one way in: what matched, what was recomputed, the peaks."""
    plain = build(name)
    model = copy.deepcopy(plain)
    result: Dict[str, Any] = {"pattern": name, "entry": entry,
                              "transformers": transformers.__version__,
                              "checkpoints_itself": _inner(plain).checkpoints_itself}
    if name == "LoraStack" and entry.startswith("enable"):
        plain.enable_input_require_grads()
    if _auto_is_on():
        # under `gcshim run` the first module to train gets gcshim: the reference must not
        # (these models have no dropout, so eval mode changes nothing else)
        plain.eval()
    reference = _steps(plain)
    result["peak_plain"] = _peak(plain)
    counter = Counter(list(_inner(model).layers))
    trained = train_through(model, entry, counter, _steps, result)  # runs: 4 each, recomputed
    if trained is None:
        return result
    compare(result, reference, trained)
    result["peak"] = _peak(model)
    result["report"] = str(gcshim.report(_inner(model))) if gcshim.is_applied(
        _inner(model)) else "transformers' own checkpointing"
    return result


def expected_runs(result: Dict[str, Any]) -> int:
    """Forward runs of each layer in two steps: forward and recompute each step, and in the
    first, where gcshim checkpoints with reentrant asked, its check of the forward without
    grad (not inside a model's own checkpoint, where gcshim does not checkpoint again)."""
    checked = result["entry"] == "apply-reentrant" and not result["checkpoints_itself"]
    return 4 + (1 if checked else 0)


def passed(result: Dict[str, Any]) -> bool:
    """Loss and every gradient as without checkpointing, every layer recomputed in both steps,
    and a lower peak (no higher one where the model checkpoints itself)."""
    if "error" in result:
        return False
    peak_ok = (result["peak"] <= result["peak_plain"] if result["checkpoints_itself"]
               else result["peak"] < result["peak_plain"])
    return (result["loss_equal"] and not result["missing"] and not result["wrong"]
            and result["runs"] == [expected_runs(result)] * LAYERS and peak_ok)


def releases() -> List[str]:
    """The other transformers releases to run on: pip --target installs (tests/conftest.py)."""
    import os

    paths = [os.environ.get("GCSHIM_OLD_TRANSFORMERS", "")]
    paths += os.environ.get("GCSHIM_MORE_TRANSFORMERS", "").split(os.pathsep)
    return [path for path in paths if path]


def run_script(command: List[str], pythonpath: str = "", entries: Optional[str] = None
               ) -> List[Dict[str, Any]]:
    """Run a corpus script in a subprocess (a release in front of the venv's packages): its
    JSON lines."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (pythonpath, str(root)) if p),
               PYTHONWARNINGS="ignore")
    if entries:
        env["DOWNSTREAM_ENTRIES"] = entries
    env.pop("GCSHIM_DISABLE", None)
    done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True,
                          timeout=900)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert results, done.stderr[-3000:]
    return results


def main(argv: List[str]) -> None:
    """Patterns named in argv (default all), through the entries in $DOWNSTREAM_ENTRIES."""
    import os

    entries = os.environ.get("DOWNSTREAM_ENTRIES", ",".join(ENTRIES)).split(",")
    for name in argv or list(PATTERNS):
        for entry in entries:
            print(json.dumps(check(name, entry)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

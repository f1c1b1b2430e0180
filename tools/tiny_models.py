"""Tiny random transformers models and inputs, built from a model type's default config.

Nothing is downloaded. Every size-like field a config has is shrunk (layers, widths, heads,
vocabulary), in sub-configs too; dropout is switched off so runs compare exactly. Inputs are made
from the model's forward signature. A few architectures need a recipe of their own (RECIPES).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

# field -> tiny value (only fields the config already has are touched, and only downwards)
LAYERS = 2
LAYER_FIELDS = (
    "num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers", "decoder_layers",
    "num_decoder_layers", "num_encoder_layers", "num_text_layers", "num_vision_layers",
)
SMALL: Dict[str, int] = {
    **{name: LAYERS for name in LAYER_FIELDS},
    "hidden_size": 64, "d_model": 64, "n_embd": 64, "embed_dim": 32, "word_embed_proj_dim": 64,
    "num_attention_heads": 4, "n_head": 4, "n_heads": 4, "num_heads": 4,
    "encoder_attention_heads": 4, "decoder_attention_heads": 4,
    "num_key_value_heads": 4, "intermediate_size": 128, "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128, "d_ff": 128, "n_inner": 128, "ffn_dim": 128, "d_inner": 128,
    "head_dim": 16, "d_kv": 16, "d_head": 16, "kv_lora_rank": 16, "q_lora_rank": 16,
    "qk_rope_head_dim": 16, "qk_nope_head_dim": 16, "v_head_dim": 16,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
    "n_group": 1, "topk_group": 1, "mamba_n_heads": 4, "mamba_d_head": 16, "mamba_d_state": 16,
    "ssm_state_size": 16, "mamba_n_groups": 1, "n_groups": 1,
    "vocab_size": 128,
    "rotary_dim": 16, "embedding_size": 64, "hidden_dim": 64, "projection_dim": 64,
}
TOKEN_SUFFIXES = ("token_id", "token_index", "_token")
SPECIAL_BASE = 128  # special token ids move to SPECIAL_BASE.. (text ids stay below)
BATCH, SEQ = 4, 64


def _is_config(value: Any) -> bool:
    return hasattr(value, "to_dict") and hasattr(value, "model_type")


def _token_ids(config: Any) -> List[int]:
    ids = []
    for key, value in vars(config).items():
        if isinstance(value, int) and not isinstance(value, bool) and key.endswith(TOKEN_SUFFIXES):
            ids.append(value)
        elif isinstance(value, (list, tuple)) and key.endswith(("token_ids", "token_id")):
            ids.extend(v for v in value if isinstance(v, int))
        elif _is_config(value):
            ids.extend(_token_ids(value))
    return ids


def _special_ids(config: Any) -> Dict[int, int]:
    """Each distinct special token id at or above SPECIAL_BASE -> a small id of its own."""
    ids = sorted({i for i in _token_ids(config) if i >= SPECIAL_BASE})
    return {old: SPECIAL_BASE + n for n, old in enumerate(ids)}


def _remap(key: str, value: Any, special: Dict[int, int]) -> Any:
    if not key.endswith(TOKEN_SUFFIXES + ("token_ids",)):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return special.get(value, value)
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return [special.get(v, v) for v in value]
    return value


def shrink_overrides(config: Any, special: Optional[Dict[int, int]] = None) -> Dict[str, Any]:
    """Constructor kwargs that make `config` tiny (recursing into sub-configs, as dicts)."""
    special = _special_ids(config) if special is None else special
    overrides: Dict[str, Any] = {}
    values = vars(config)
    for key, small in SMALL.items():
        value = values.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > small:
            overrides[key] = small
    # per-layer lists (layer_types, layers_block_type, ...) and dicts follow the layer count
    counts = {values[k]: overrides[k] for k in LAYER_FIELDS if k in overrides}
    for key, value in values.items():
        if isinstance(value, (list, tuple)) and len(value) in counts and key not in overrides:
            overrides[key] = list(value)[: counts[len(value)]]
        elif isinstance(value, dict) and "layer" in key and value and all(
                isinstance(k, int) or (isinstance(k, str) and k.isdigit()) for k in value):
            overrides[key] = {k: v for k, v in value.items() if int(k) < LAYERS}
        elif key in ("num_heads", "num_attention_heads", "depths") and isinstance(value, list):
            overrides[key] = [min(v, 2) for v in value]  # Swin-style stage lists
    rope = _rope_overrides(config, overrides)
    if rope:
        overrides.update(rope)
    if "vocab_size" in overrides:  # special tokens (image, audio...) sit above the text ids
        overrides["vocab_size"] = SPECIAL_BASE + len(special) + 8
    for key, value in values.items():
        remapped = _remap(key, value, special)
        if remapped is not value and remapped != value:
            overrides[key] = remapped
        if _is_config(value):
            sub = value.to_dict()
            sub.update(shrink_overrides(value, special))
            overrides[key] = sub
        elif isinstance(value, float) and ("dropout" in key or key.endswith("_pdrop")
                                           or key in ("layerdrop", "drop_path_rate")):
            overrides[key] = 0.0
        elif key in ("out_features", "out_indices") and value:
            overrides[key] = None  # backbones: the last of the (fewer) stages
        elif isinstance(value, float) and key.startswith("mask_") and key.endswith("_prob"):
            overrides[key] = 0.0  # wav2vec2-style random masking
    return overrides


def _rope_overrides(config: Any, overrides: Dict[str, Any]) -> Dict[str, Any]:
    """Multimodal RoPE sections must add up to half the (new) rotary dimension."""
    changed = {}
    for key in ("rope_parameters", "rope_scaling"):
        rope = getattr(config, key, None)
        if not isinstance(rope, dict):
            continue
        if "mrope_section" not in rope and "mrope_section" in getattr(
                type(config), "ignore_keys_at_rope_validation", ()):
            rope = {**rope, "mrope_section": [16, 24, 24]}  # the modeling code's default
        if not isinstance(rope.get("mrope_section"), list):
            continue
        hidden = overrides.get("hidden_size", getattr(config, "hidden_size", 32))
        heads = overrides.get("num_attention_heads", getattr(config, "num_attention_heads", 4))
        head_dim = overrides.get("head_dim", hidden // heads)
        factor = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))
        half = max(int(head_dim * factor) // 2, len(rope["mrope_section"]))
        old = rope["mrope_section"]
        new = [max(1, round(part * half / sum(old))) for part in old]
        new[0] += half - sum(new)
        changed[key] = {**rope, "mrope_section": new}
    return changed


def tiny_config(config_class: type, extra: Optional[Dict[str, Any]] = None,
                layers: int = 2) -> Any:
    """A tiny config; `layers` > 2 for hybrids whose attention layers come later."""
    global LAYERS
    saved, LAYERS = LAYERS, layers
    SMALL.update({name: layers for name in LAYER_FIELDS})
    try:
        overrides = shrink_overrides(config_class())
    finally:
        LAYERS = saved
        SMALL.update({name: saved for name in LAYER_FIELDS})
    overrides.update(extra or {})
    config = config_class(**overrides)
    if not hasattr(config, "pad_token_id"):
        # transformers 5.0.0: some configs (Phi, JetMoe) lack the pad_token_id their models read
        config.pad_token_id = None
    return config


# -- which class, which inputs ----------------------------------------------------------------
HEAD_MAPPINGS = (
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_FOR_CTC_MAPPING_NAMES",
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_MAPPING_NAMES",
    # models with no base class of their own (Pix2Struct)
    "MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES",
    "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
)


def model_class_name(model_type: str) -> Optional[str]:
    from transformers.models.auto import modeling_auto

    for mapping in HEAD_MAPPINGS:
        names = getattr(modeling_auto, mapping, {})
        name = names.get(model_type)
        if isinstance(name, (list, tuple)):
            name = name[0]
        if name:
            return name
    return None


def _sizes(value: Any) -> Tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)


def _text_ids(config: Any, vocab: int, shape: Tuple[int, ...]) -> torch.Tensor:
    special = set(_token_ids(config))
    allowed = torch.tensor([i for i in range(3, min(vocab, SPECIAL_BASE)) if i not in special])
    return allowed[torch.randint(len(allowed), shape)]


def _vocab(config: Any) -> int:
    vocab = getattr(config, "vocab_size", None)
    if vocab is None:
        text = getattr(config, "text_config", None) or getattr(config, "decoder", None)
        vocab = getattr(text, "vocab_size", 100)
    return int(vocab)


LM_HEADS = ("ForCausalLM", "LMHeadModel", "ForMaskedLM", "ForConditionalGeneration")


def _pixels(config: Any) -> torch.Tensor:
    vision = getattr(config, "vision_config", None) or config
    height, width = _sizes(getattr(vision, "image_size", 32))
    channels = getattr(vision, "num_channels", 3)
    return torch.randn(BATCH, channels, height, width)


def input_variants(model: Any) -> List[Dict[str, Any]]:
    """Inputs to try in turn: the generic ones, then with images added, then 3-D audio."""
    first = make_inputs(model)
    variants = [first]
    params = inspect.signature(model.forward).parameters
    if "pixel_values" in params and "pixel_values" not in first:
        variants.append({**first, "pixel_values": _pixels(model.config)})
    if "input_values" in first:
        variants.append({**first, "input_values": first["input_values"][:, None]})
    if "input_features" in params and "input_features" not in first:
        bins = getattr(model.config, "feature_size", None) or 80
        variants.append({**first, "input_features": torch.randn(BATCH, bins, 64)})
    return variants


def make_inputs(model: Any) -> Dict[str, Any]:
    """Keyword inputs for one training step of `model`, from its forward signature."""
    config = model.config
    params = inspect.signature(model.forward).parameters
    inputs: Dict[str, Any] = {}
    name = model.main_input_name
    vocab = _vocab(config)
    if name == "input_ids" or (name not in params and "input_ids" in params):
        ids = _text_ids(config, vocab, (BATCH, SEQ))
        inputs["input_ids"] = ids
        if "attention_mask" in params:
            inputs["attention_mask"] = torch.ones_like(ids)
        if "labels" in params and type(model).__name__.endswith(LM_HEADS):
            inputs["labels"] = ids.clone()
        if "decoder_input_ids" in params:  # given, so no decoder_start_token_id is needed
            inputs["decoder_input_ids"] = torch.nn.functional.pad(ids[:, :-1], (1, 0))
        if "token_type_ids" in params and "pixel_values" in params:
            # vision-language models of transformers 5.0 require it in training (0: prefix)
            inputs["token_type_ids"] = torch.zeros_like(ids)
    elif name == "pixel_values":
        inputs["pixel_values"] = _pixels(config)
        if "labels" in params and type(model).__name__.endswith("ForImageClassification"):
            inputs["labels"] = torch.randint(config.num_labels, (BATCH,))
    elif name == "input_values":
        inputs["input_values"] = torch.randn(BATCH, 3200)
        if "decoder_input_ids" in params:
            inputs["decoder_input_ids"] = _text_ids(config, vocab, (BATCH, SEQ // 2))
    elif name == "input_features":
        frames = 2 * getattr(config, "max_source_positions", 32)
        bins = (getattr(config, "num_mel_bins", None)
                or getattr(config, "input_feat_per_channel", 80))
        if getattr(config, "model_type", "") == "whisper":
            inputs["input_features"] = torch.randn(BATCH, bins, frames)
        else:
            inputs["input_features"] = torch.randn(BATCH, frames, bins)
        if "decoder_input_ids" in params:
            inputs["decoder_input_ids"] = _text_ids(config, vocab, (BATCH, SEQ // 2))
    else:
        raise NotImplementedError(f"no input recipe for main input {name!r}")
    return inputs


CACHE_OUTPUTS = ("past_key_values", "past_key_value", "cache", "mems", "presents")


def output_tensors(output: Any) -> List[torch.Tensor]:
    """The floating tensors of a model output that need a gradient, depth first, with returned
    caches left out at any depth (a vision-language model's language-model output sits inside
    its own, with its cache): checkpointing turns caches off, and they are no training signal."""
    found: List[torch.Tensor] = []

    def walk(node: Any) -> None:
        if isinstance(node, torch.Tensor):
            if node.is_floating_point() and node.requires_grad:
                found.append(node)
        elif isinstance(node, dict):  # ModelOutput among them
            for key, value in node.items():
                if key not in CACHE_OUTPUTS:
                    walk(value)
        elif isinstance(node, (list, tuple)):
            for item in node:
                walk(item)
        elif dataclasses.is_dataclass(node) and not isinstance(node, type):
            for field in dataclasses.fields(node):
                walk(getattr(node, field.name))

    walk(output)
    return found


def loss_of(output: Any) -> torch.Tensor:
    """The output's loss, else the sum of the means of its floating-point tensors (returned
    caches left out)."""
    loss = getattr(output, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss
    if isinstance(output, tuple):
        output = output[0]
    floats = [t.float().mean() for t in output_tensors(output)]
    if not floats:
        raise RuntimeError("the output has no tensor that requires grad")
    return torch.stack(floats).sum()


def build(model_type: str, recipe: Optional[Recipe] = None,
          layers: int = 2) -> Tuple[Any, List[Dict[str, Any]]]:
    """A tiny random model of `model_type` and the inputs to try for one training step."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    recipe = recipe or RECIPES.get(model_type, Recipe())
    config = tiny_config(CONFIG_MAPPING[model_type], recipe.config, layers)
    class_name = recipe.model_class or model_class_name(model_type)
    if class_name is None:
        raise NoModelClass(f"no model class for {model_type} (a sub-model config)")
    model_class = getattr(transformers, class_name)
    torch.manual_seed(0)
    model = model_class(recipe.sub_config(config) if recipe.sub_config else config)
    for module in model.modules():  # functional dropout modules built from hard-coded rates
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    inputs = [recipe.inputs(model)] if recipe.inputs else input_variants(model)
    return model, inputs


class NoModelClass(LookupError):
    """The model type is only a sub-config of another architecture."""


class Recipe:
    """How to build one architecture where the generic rules are not enough."""

    def __init__(
        self,
        config: Optional[Dict[str, Any]] = None,
        model_class: Optional[str] = None,
        inputs: Optional[Callable[[Any], Dict[str, Any]]] = None,
        sub_config: Optional[Callable[[Any], Any]] = None,
    ) -> None:
        self.config = config or {}
        self.model_class = model_class
        self.inputs = inputs
        self.sub_config = sub_config  # the part of the config the model class takes


def _pi0_inputs(model: Any) -> Dict[str, Any]:
    """Robot state, noise and actions, and a prompt whose image tokens match the image."""
    config = model.config
    vision = config.vlm_config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    image = torch.full((BATCH, patches), config.vlm_config.image_token_id)
    ids = torch.cat([image, _text_ids(config.vlm_config, 128, (BATCH, 8))], dim=1)
    return {
        "state": torch.randn(BATCH, config.max_state_dim),
        "noise": torch.randn(BATCH, config.chunk_size, config.max_action_dim),
        "timestep": torch.rand(BATCH),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(BATCH, 1, 3, vision.image_size, vision.image_size),
        "pixel_attention_mask": torch.ones(BATCH, 1, dtype=torch.bool),  # one camera
        "actions": torch.randn(BATCH, config.chunk_size, config.max_action_dim),
    }


# Zamba ties every hybrid layer's shared block to the first one: two hybrids are needed
_ZAMBA_LAYERS = {"num_hidden_layers": 4, "layers_block_type": ["mamba", "hybrid"] * 2,
                 "mamba_d_state": 8}

RECIPES: Dict[str, Recipe] = {
    "zamba": Recipe(config={**_ZAMBA_LAYERS, "n_mamba_heads": 2}),
    "zamba2": Recipe(config={**_ZAMBA_LAYERS, "mamba_headdim": 16}),  # 8 heads x 16 = 2 x 64
    "bark": Recipe(model_class="BarkSemanticModel",
                   sub_config=lambda config: config.semantic_config),
    "pi0": Recipe(model_class="PI0ForConditionalGeneration", inputs=_pi0_inputs),
}

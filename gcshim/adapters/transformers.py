"""Rows for Hugging Face transformers layers (class names only: transformers is not imported).

Most layers are covered by the generic rules (cache arguments found by name; a `layer_past`
layer returns its cache at index 1, a `past_key_value(s)` layer appends it). Rows exist so that
`layers="auto"` finds these blocks first and for the layers that break the generic rules.
"""

from .base import Adapter

_HF = "transformers."

ROWS = [
    Adapter(
        name="transformers decoder layer (Llama family)",
        classes=(
            "LlamaDecoderLayer",
            "MistralDecoderLayer",
            "Qwen2DecoderLayer",
            "Qwen3DecoderLayer",
            "GemmaDecoderLayer",
            "Gemma2DecoderLayer",
            "Phi3DecoderLayer",
            "PhiDecoderLayer",
            "OPTDecoderLayer",
        ),
        module_prefix=_HF,
        package="transformers",
        notes="tuple outputs before 4.55 append the Cache; Tensor outputs after",
    ),
    Adapter(
        name="transformers MixtralDecoderLayer <4.55",
        classes=("MixtralDecoderLayer",),
        module_prefix=_HF,
        package="transformers",
        versions="<4.55",
        # (h, [attn], [cache], [router_logits]): the cache sits before the router logits.
        cache_slot=lambda argument: 1 + bool(argument("output_attentions")),
    ),
    Adapter(
        name="transformers MixtralDecoderLayer",
        classes=("MixtralDecoderLayer",),
        module_prefix=_HF,
        package="transformers",
    ),
    Adapter(
        name="transformers layer_past blocks",
        classes=("GPT2Block", "GPTJBlock", "GPTNeoXLayer", "FalconDecoderLayer", "BloomBlock"),
        module_prefix=_HF,
        package="transformers",
        notes="tuple outputs carry the cache at index 1 while use_cache is on",
    ),
    Adapter(
        name="transformers T5Block <5",
        classes=("T5Block",),
        module_prefix=_HF,
        package="transformers",
        versions="<5",
        # (h, [present], position_bias, ...): the cache follows the hidden states.
        cache_slot=1,
    ),
]

"""Rows for hybrid and multimodal transformers models: shared layers, cross-attention, caches
the model itself needs inside the training forward."""

from .base import Adapter

HF = "transformers."


def _any_layer(cls: type) -> bool:
    return True


ROWS = [
    Adapter(
        name="transformers PI0 (prefix cache)",
        predicate=_any_layer,
        within=("PI0Model",),
        package="transformers",
        cache_policy="run-as-is",
        auto=False,
        notes="the VLM fills a prefix cache the action expert reads in the same training "
              "forward: calls that carry it are not checkpointed",
    ),
    Adapter(
        name="transformers Dory (recurrent loops share KV through the cache)",
        predicate=_any_layer,
        within=("DoryModel",),
        package="transformers",
        cache_policy="run-as-is",
        auto=False,
        notes="with a cache, later loops read the KV states earlier loops stored in it",
    ),
    Adapter(
        name="transformers Zamba hybrid layers",
        classes=("ZambaMambaDecoderLayer", "ZambaHybridLayer", "Zamba2MambaDecoderLayer",
                 "Zamba2HybridLayer"),
        module_prefix=HF,
        package="transformers",
        grad_args=("hidden_states", "original_hidden_states"),
        notes="hybrid layers share one attention block; each call is checkpointed on its own",
    ),
    Adapter(
        name="transformers Mllama text layers",
        classes=("MllamaSelfAttentionDecoderLayer", "MllamaCrossAttentionDecoderLayer"),
        module_prefix=HF,
        package="transformers",
        grad_args=("hidden_states", "cross_attention_states"),
        notes="cross-attention states carry gradients from the vision tower",
    ),
]

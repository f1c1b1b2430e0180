"""Rows for hybrid and multimodal transformers models: shared layers, cross-attention, caches
the model itself needs inside the training forward."""

from .hf_common import transformers_row
from .row import Adapter


def _any_layer(cls: type) -> bool:
    return True


def _model_reads_its_cache(name: str, model_class: str, notes: str) -> Adapter:
    """Every layer inside `model_class`: a call that carries a cache runs un-checkpointed."""
    return Adapter(name=name, predicate=_any_layer, within=(model_class,), package="transformers",
                   cache_policy="run-as-is", auto=False, notes=notes)


ROWS = [
    _model_reads_its_cache(
        "transformers PI0 (prefix cache)", "PI0Model",
        "the VLM fills a prefix cache the action expert reads in the same training forward"),
    _model_reads_its_cache(
        "transformers Dory (recurrent loops share KV through the cache)", "DoryModel",
        "with a cache, later loops read the KV states earlier loops stored in it"),
    Adapter(
        name="transformers DiffusionGemma encoder text layers (fill the decoder's KV cache)",
        classes=("DiffusionGemmaEncoderTextLayer",), package="transformers",
        cache_policy="run-as-is", auto=False,
        notes="the encoder's layers write the KV cache that the decoder's layers read in the "
              "same training forward (transformers does not checkpoint them either); the "
              "decoder's layers, reading the filled cache, are checkpointed with it kept",
    ),
    transformers_row(
        name="transformers Zamba hybrid layers",
        classes=("ZambaMambaDecoderLayer", "ZambaHybridLayer", "Zamba2MambaDecoderLayer",
                 "Zamba2HybridLayer"),
        grad_args=("hidden_states", "original_hidden_states"),
        notes="hybrid layers share one attention block; each call is checkpointed on its own",
    ),
    transformers_row(
        name="transformers Mllama text layers",
        classes=("MllamaSelfAttentionDecoderLayer", "MllamaCrossAttentionDecoderLayer"),
        grad_args=("hidden_states", "cross_attention_states"),
        notes="cross-attention states carry gradients from the vision tower",
    ),
]

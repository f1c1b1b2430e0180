"""Rows for hybrid and multimodal transformers models: shared layers, cross-attention, caches
the model itself needs inside the training forward."""

from .hf_common import transformers_row
from .row import Adapter


def _any_layer(cls: type) -> bool:
    return True


def _model_reads_its_cache(name: str, model_class: str, notes: str,
                           versions: str = "") -> Adapter:
    """Every layer inside `model_class`: a call that carries a cache runs un-checkpointed."""
    return Adapter(name=name, predicate=_any_layer, within=(model_class,), package="transformers",
                   versions=versions, cache_policy="run-as-is", auto=False, notes=notes)


# Gemma 3n and Gemma 4 before 5.6: with a cache, the KV-shared layers read the keys and values
# an earlier layer stored on it (`cache.shared_layers`); without one they compute their own.
# Taking the cache away changes what the model computes. (5.6 passes them as an argument.)
_KV_SHARED_THROUGH_CACHE = ("with a cache (made in training too from 5.0), KV-shared layers "
                            "read the keys and values earlier layers stored on it")


ROWS = [
    _model_reads_its_cache(
        "transformers PI0 (prefix cache)", "PI0Model",
        "the VLM fills a prefix cache the action expert reads in the same training forward"),
    _model_reads_its_cache(
        "transformers Dory (recurrent loops share KV through the cache)", "DoryModel",
        "with a cache, later loops read the KV states earlier loops stored in it"),
    _model_reads_its_cache(
        "transformers Gemma 3n text (<5.6: KV sharing through the cache)", "Gemma3nTextModel",
        _KV_SHARED_THROUGH_CACHE, versions="<5.6"),
    _model_reads_its_cache(
        "transformers Gemma 4 text (<5.6: KV sharing through the cache)", "Gemma4TextModel",
        _KV_SHARED_THROUGH_CACHE, versions="<5.6"),
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

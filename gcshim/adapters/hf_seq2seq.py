"""Rows for transformers' encoder-decoder models (T5 family, BART family, Whisper, ...)."""

from .base import Adapter

HF = "transformers."

T5_STYLE = ("T5Block", "MT5Block", "LongT5Block", "SwitchTransformersBlock")

ROWS = [
    Adapter(
        name="transformers UMT5Block <4.53",
        classes=("UMT5Block",),
        module_prefix=HF,
        package="transformers",
        versions="<4.53",
        cache_slot=1,
        transformers_checkpointing="broken",
        grad_args=("hidden_states", "encoder_hidden_states"),
        notes="transformers' stack drops each checkpointed block's output (no gradients)",
    ),
    Adapter(
        name="transformers Pix2Struct / Pop2Piano blocks 4.52",
        classes=("Pix2StructTextBlock", "Pop2PianoBlock"),
        module_prefix=HF,
        package="transformers",
        versions=">=4.52,<4.53",
        cache_slot=1,
        transformers_checkpointing="broken",
        grad_args=("hidden_states", "position_bias", "encoder_hidden_states"),
        notes="transformers passes cache_position positionally into return_dict",
    ),
    Adapter(
        name="transformers UDOP block",
        classes=("UdopBlock",),
        module_prefix=HF,
        package="transformers",
        versions="<5",
        cache_slot=1,
        transformers_checkpointing="no-op",
        grad_args=("hidden_states", "position_bias"),
        notes="transformers sets the flag and checkpoints nothing",
    ),
    Adapter(
        name="transformers T5-style block <5",
        classes=(*T5_STYLE, "UMT5Block", "Pix2StructTextBlock", "Pop2PianoBlock", "UdopBlock"),
        module_prefix=HF,
        package="transformers",
        versions="<5",
        cache_slot=1,
        grad_args=("hidden_states", "position_bias", "encoder_hidden_states",
                   "encoder_decoder_position_bias"),
        notes="(h, [present], position_bias, ...): the cache follows the hidden states; the "
              "learned position bias is a grad-carrying argument",
    ),
    Adapter(
        name="transformers T5-style block",
        classes=(*T5_STYLE, "UMT5Block", "Pix2StructTextBlock", "Pop2PianoBlock", "UdopBlock"),
        module_prefix=HF,
        package="transformers",
        versions=">=5",
        grad_args=("hidden_states", "position_bias", "encoder_hidden_states",
                   "encoder_decoder_position_bias"),
        notes="no cache in the output; the cache object is updated in place",
    ),
    Adapter(
        name="transformers BART-style layer",
        classes=("BartEncoderLayer", "BartDecoderLayer", "MBartEncoderLayer", "MBartDecoderLayer",
                 "PegasusEncoderLayer", "PegasusDecoderLayer", "MarianEncoderLayer",
                 "MarianDecoderLayer", "WhisperEncoderLayer", "WhisperDecoderLayer",
                 "PLBartEncoderLayer", "PLBartDecoderLayer", "BlenderbotEncoderLayer",
                 "BlenderbotDecoderLayer", "M2M100EncoderLayer", "M2M100DecoderLayer"),
        module_prefix=HF,
        package="transformers",
        grad_args=("hidden_states", "encoder_hidden_states"),
        notes="decoder layers default use_cache=True and append the cache (4.4x)",
    ),
]

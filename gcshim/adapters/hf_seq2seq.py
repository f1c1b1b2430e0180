"""Rows for transformers' encoder-decoder models (T5 family, BART family, Whisper, ...)."""

from .hf_common import transformers_row

T5_STYLE = ("T5Block", "MT5Block", "LongT5Block", "SwitchTransformersBlock")

ROWS = [
    transformers_row(
        name="transformers UMT5Block <4.53",
        classes=("UMT5Block",),
        versions="<4.53",
        cache_slot=1,
        transformers_checkpointing="broken",
        grad_args=("hidden_states", "encoder_hidden_states"),
        notes="transformers' stack drops each checkpointed block's output (no gradients)",
    ),
    transformers_row(
        name="transformers Pix2Struct / Pop2Piano blocks 4.52",
        classes=("Pix2StructTextBlock", "Pop2PianoBlock"),
        versions=">=4.52,<4.53",
        cache_slot=1,
        transformers_checkpointing="broken",
        grad_args=("hidden_states", "position_bias", "encoder_hidden_states"),
        notes="transformers passes cache_position positionally into return_dict",
    ),
    transformers_row(
        name="transformers UDOP block",
        classes=("UdopBlock",),
        versions="<5",
        cache_slot=1,
        transformers_checkpointing="no-op",
        grad_args=("hidden_states", "position_bias"),
        notes="transformers sets the flag and checkpoints nothing",
    ),
    transformers_row(
        name="transformers T5-style block <5",
        classes=(*T5_STYLE, "UMT5Block", "Pix2StructTextBlock", "Pop2PianoBlock", "UdopBlock"),
        versions="<5",
        cache_slot=1,
        grad_args=("hidden_states", "position_bias", "encoder_hidden_states",
                   "encoder_decoder_position_bias"),
        notes="(h, [present], position_bias, ...): the cache follows the hidden states; the "
              "learned position bias is a grad-carrying argument",
    ),
    transformers_row(
        name="transformers T5-style block",
        classes=(*T5_STYLE, "UMT5Block", "Pix2StructTextBlock", "Pop2PianoBlock", "UdopBlock"),
        versions=">=5",
        grad_args=("hidden_states", "position_bias", "encoder_hidden_states",
                   "encoder_decoder_position_bias"),
        notes="no cache in the output; the cache object is updated in place",
    ),
    transformers_row(
        name="transformers BART-style layer",
        classes=("BartEncoderLayer", "BartDecoderLayer", "MBartEncoderLayer", "MBartDecoderLayer",
                 "PegasusEncoderLayer", "PegasusDecoderLayer", "MarianEncoderLayer",
                 "MarianDecoderLayer", "WhisperEncoderLayer", "WhisperDecoderLayer",
                 "PLBartEncoderLayer", "PLBartDecoderLayer", "BlenderbotEncoderLayer",
                 "BlenderbotDecoderLayer", "M2M100EncoderLayer", "M2M100DecoderLayer"),
        grad_args=("hidden_states", "encoder_hidden_states"),
        notes="decoder layers default use_cache=True and append the cache (4.4x)",
    ),
]

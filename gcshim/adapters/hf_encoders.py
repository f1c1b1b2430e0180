"""Rows for transformers' encoder models (BERT family and the ones transformers can't checkpoint).

BERT-style layers take ``past_key_value(s)`` only in decoder mode and append the cache to their
tuple output (4.4x), which the generic rules already do; the rows make auto discovery exact and
record where transformers' own checkpointing is missing.
"""

from .hf_common import transformers_row

ROWS = [
    transformers_row(
        name="transformers BERT-style layer",
        classes=("BertLayer", "RobertaLayer", "ElectraLayer", "CamembertLayer",
                 "XLMRobertaLayer", "DebertaLayer", "DebertaV2Layer", "ErnieLayer",
                 "RoFormerLayer", "DistilBertTransformerBlock", "TransformerBlock"),
        grad_args=("hidden_states", "encoder_hidden_states"),
    ),
    transformers_row(
        name="transformers ALBERT layer group",
        classes=("AlbertLayerGroup",),
        transformers_checkpointing="unsupported",
        notes="one group, shared, called once per layer: each call is checkpointed on its own",
    ),
    transformers_row(
        name="transformers encoders without transformers checkpointing",
        classes=("MPNetLayer", "SqueezeBertModule", "FunnelLayer", "XLMLayer", "ReformerLayer"),
        transformers_checkpointing="unsupported",
        notes="supports_gradient_checkpointing is False for these models",
    ),
    transformers_row(
        name="transformers XLNet layer",
        classes=("XLNetLayer",),
        transformers_checkpointing="unsupported",
        grad_args=("output_h", "output_g"),
        notes="two streams (content h, query g); `mems` from earlier segments are inputs only",
    ),
]

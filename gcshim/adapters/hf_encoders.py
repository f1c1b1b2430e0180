"""Rows for transformers' encoder models (BERT family and the ones transformers can't checkpoint).

BERT-style layers take ``past_key_value(s)`` only in decoder mode and append the cache to their
tuple output (4.4x), which the generic rules already do; the rows make auto discovery exact and
record where transformers' own checkpointing is missing.
"""

from .base import Adapter

HF = "transformers."

ROWS = [
    Adapter(
        name="transformers BERT-style layer",
        classes=("BertLayer", "RobertaLayer", "ElectraLayer", "CamembertLayer",
                 "XLMRobertaLayer", "DebertaLayer", "DebertaV2Layer", "ErnieLayer",
                 "RoFormerLayer", "DistilBertTransformerBlock", "TransformerBlock"),
        module_prefix=HF,
        package="transformers",
        grad_args=("hidden_states", "encoder_hidden_states"),
    ),
    Adapter(
        name="transformers ALBERT layer group",
        classes=("AlbertLayerGroup",),
        module_prefix=HF,
        package="transformers",
        transformers_checkpointing="unsupported",
        grad_args=("hidden_states",),
        notes="one group, shared, called once per layer: each call is checkpointed on its own",
    ),
    Adapter(
        name="transformers encoders without transformers checkpointing",
        classes=("MPNetLayer", "SqueezeBertModule", "FunnelLayer", "XLMLayer", "ReformerLayer"),
        module_prefix=HF,
        package="transformers",
        transformers_checkpointing="unsupported",
        grad_args=("hidden_states",),
        notes="supports_gradient_checkpointing is False for these models",
    ),
    Adapter(
        name="transformers XLNet layer",
        classes=("XLNetLayer",),
        module_prefix=HF,
        package="transformers",
        transformers_checkpointing="unsupported",
        grad_args=("output_h", "output_g"),
        notes="two streams (content h, query g); `mems` from earlier segments are inputs only",
    ),
]

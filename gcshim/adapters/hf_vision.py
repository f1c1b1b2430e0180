"""Rows for transformers' vision encoders, incl. those its own checkpointing misses."""

from .hf_common import transformers_row

ROWS = [
    transformers_row(
        name="transformers vision blocks transformers does not checkpoint",
        classes=("MllamaVisionEncoderLayer", "JanusVQVAEResnetBlock", "ClvpEncoderLayer",
                 "ClvpDecoderLayer", "GroupViTEncoderLayer"),
        transformers_checkpointing="no-op",
        grad_args=("hidden_state", "hidden_states"),
        notes="the model sets gradient_checkpointing on the stack but never checkpoints them",
    ),
    transformers_row(
        name="transformers SwiftFormer block <5",
        classes=("SwiftFormerEncoderBlock", "SwiftFormerConvEncoder",
                 "SwiftFormerLocalRepresentation"),
        versions="<5",
        transformers_checkpointing="no-op",
        grad_args=("x",),
    ),
    transformers_row(
        name="transformers MaskFormer-Swin stage",
        classes=("MaskFormerSwinStage",),
        versions="<5",
        transformers_checkpointing="broken",
        notes="transformers' checkpoint call raises TypeError on these releases",
    ),
    transformers_row(
        name="transformers BridgeTower layers",
        classes=("BridgeTowerBertCrossLayer", "BridgeTowerResidualAttention"),
        transformers_checkpointing="unsupported",
        grad_args=("hidden_states", "encoder_hidden_states"),
    ),
    transformers_row(
        name="transformers vision encoder layer",
        classes=("ViTLayer", "CLIPEncoderLayer", "SiglipEncoderLayer", "Siglip2EncoderLayer",
                 "SwinStage", "Swinv2Stage", "DonutSwinStage", "ConvNextStage", "ConvNextV2Stage",
                 "PvtV2BlockLayer", "Qwen2VLVisionBlock", "Qwen2_5_VLVisionBlock",
                 "DeiTLayer", "BeitLayer", "Dinov2Layer", "ViTMAELayer", "Data2VecVisionLayer",
                 # transformers' own works for these from 5.0 (narrower rows above before)
                 "MaskFormerSwinStage", "SwiftFormerEncoderBlock", "SwiftFormerConvEncoder",
                 "SwiftFormerLocalRepresentation"),
        notes="no cache; PVTv2 blocks may get inputs that need no grad (reentrant anchor)",
    ),
]

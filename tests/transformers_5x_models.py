"""Tiny random models of architectures transformers 5.x added, whose own checkpointing gcshim's
auto discovery once missed or broke (PP-FormulaNet and SLANeXt: one-layer stacks; CLIPSeg:
a decoder stack beside its frozen CLIP towers; Xcodec2: nothing recomputed; DiffusionGemma: its
encoder fills the KV cache its decoder reads).

Each builder returns (model, inputs): the model in train mode, and keyword inputs on which
`model(**inputs)` gives floating outputs that require grad. The configs keep each model's
kinds of layers, smaller.
"""

import torch


def _windowed_vision() -> dict:
    """The vision tower PP-FormulaNet and SLANeXt share (windowed and global attention layers,
    64x64 images), small."""
    return dict(
        hidden_size=32,
        output_channels=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_channels=3,
        image_size=64,
        patch_size=8,  # 8x8 token grid
        mlp_dim=64,
        window_size=4,  # layer 0 windowed, layer 1 global (as in the default mix)
        global_attn_indexes=[1],
        use_abs_pos=True,
        use_rel_pos=True,
        # the default initializer_range, 1e-10, makes the vision tower's output about 1e-20
        initializer_range=0.02,
    )


def build_pp_formulanet():
    torch.manual_seed(0)
    from transformers import PPFormulaNetConfig, PPFormulaNetForConditionalGeneration

    d_model = 32
    vision_config = dict(
        _windowed_vision(),
        post_conv_in_channels=16,  # must equal output_channels
        post_conv_mid_channels=32,
        post_conv_out_channels=32,
        decoder_hidden_size=d_model,  # must equal text d_model
    )
    text_config = dict(
        vocab_size=99,
        max_position_embeddings=64,
        d_model=d_model,
        encoder_layers=2,
        encoder_attention_heads=2,
        decoder_layers=2,
        decoder_attention_heads=2,
        decoder_ffn_dim=64,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=2,
    )
    config = PPFormulaNetConfig(text_config=text_config, vision_config=vision_config)
    model = PPFormulaNetForConditionalGeneration(config).train()
    inputs = {
        "pixel_values": torch.randn(2, 3, 64, 64),
        "decoder_input_ids": torch.randint(3, 99, (2, 7)),
        "use_cache": False,
    }
    return model, inputs


def build_slanext():
    torch.manual_seed(0)
    from transformers import SLANeXtConfig, SLANeXtForTableRecognition

    config = SLANeXtConfig(
        vision_config=_windowed_vision(),
        post_conv_in_channels=16,  # must equal vision output_channels
        post_conv_out_channels=32,
        out_channels=12,
        hidden_size=32,
        max_text_length=8,  # number of autoregressive GRU steps (<= max_text_length + 1)
    )
    model = SLANeXtForTableRecognition(config).train()
    inputs = {"pixel_values": torch.randn(2, 3, 64, 64)}
    return model, inputs


def build_xcodec2():
    torch.manual_seed(0)
    from transformers import Xcodec2Config, Xcodec2Model

    sem_hidden = 32
    hidden = 64  # GroupNorm(32 groups) in the ResNet blocks -> multiple of 32
    semantic_model_config = dict(
        model_type="wav2vec2-bert",
        hidden_size=sem_hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        output_hidden_size=sem_hidden,
        feature_projection_input_dim=160,  # 80 mel bins stacked by 2 (feature extractor stride)
        conv_depthwise_kernel_size=3,
        add_adapter=False,
        layerdrop=0.0,  # default 0.1 randomly skips encoder layers in train mode
    )
    config = Xcodec2Config(
        hidden_size=hidden,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=64,
        encoder_hidden_size=8,
        downsampling_ratios=[2, 4],  # hop_length 8, n_fft 32
        semantic_model_config=semantic_model_config,
        quantization_dim=hidden + sem_hidden,  # project_in takes fc_encoder's output
        quantization_levels=[4, 4, 4, 4],
        # with the default 0.02 the tiny encoder's output is ~1e-4, FSQ rounds every code to 0, the
        # decoded audio is exactly 0 (so all grads are 0); 0.1 gives varied codes and non-zero audio
        initializer_range=0.1,
    )
    model = Xcodec2Model(config).train()
    frames = 12
    inputs = {
        # acoustic frames (= len / hop_length) must match semantic frames
        "input_values": torch.randn(2, 1, frames * config.hop_length),
        "input_features": torch.randn(2, frames, 160),
    }
    return model, inputs


def build_diffusion_gemma():
    torch.manual_seed(0)
    from transformers import DiffusionGemmaConfig, DiffusionGemmaModel

    text_config = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        global_head_dim=32,  # popped in __post_init__ -> per_layer_config for full-attention layers
        max_position_embeddings=128,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        num_experts=4,
        top_k_experts=2,
        moe_intermediate_size=32,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    vision_config = dict(
        model_type="gemma4_vision",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        position_embedding_size=64,
        patch_size=4,
    )
    config = DiffusionGemmaConfig(
        text_config=text_config,
        vision_config=vision_config,
        boi_token_id=120,
        eoi_token_id=121,
        image_token_id=122,
        canvas_length=8,
    )
    model = DiffusionGemmaModel(config).train()
    # One image per sample: a 6x6 grid of 4x4 patches (36 patches, 3*4*4 values each), pooled by
    # pooling_kernel_size=3 into 4 soft tokens, which replace 4 image_token_id placeholders.
    grid = 6
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    image_position_ids = torch.stack([xs.flatten(), ys.flatten()], -1)[None].repeat(2, 1, 1)
    pixel_values = torch.rand(2, grid * grid, 3 * 4 * 4)
    input_ids = torch.randint(3, 100, (2, 10))
    input_ids[:, 1] = config.boi_token_id
    input_ids[:, 2:6] = config.image_token_id
    input_ids[:, 6] = config.eoi_token_id
    inputs = {
        "input_ids": input_ids,
        "decoder_input_ids": torch.randint(3, 100, (2, 8)),  # canvas (length == canvas_length)
        # previous-step logits: the self-conditioning block trains (else its grads are all 0)
        "self_conditioning_logits": torch.randn(2, 8, 128),
        "pixel_values": pixel_values,
        "image_position_ids": image_position_ids,
    }
    return model, inputs


def build_clipseg():
    torch.manual_seed(0)
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    text_config = dict(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        pad_token_id=1,
        bos_token_id=97,
        eos_token_id=98,
    )
    vision_config = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    config = CLIPSegConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=32,
        extract_layers=[0, 1],  # indices < vision num_hidden_layers; one decoder layer per entry
        reduce_dim=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        conditional_layer=0,
    )
    model = CLIPSegForImageSegmentation(config).train()
    input_ids = torch.randint(2, 97, (2, 7))
    input_ids[:, -1] = 98  # eos at the end (pooling uses eos_token_id)
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones(2, 7, dtype=torch.long),
        "pixel_values": torch.randn(2, 3, 32, 32),
    }
    return model, inputs


BUILDERS = {
    "PPFormulaNetForConditionalGeneration": build_pp_formulanet,
    "SLANeXtForTableRecognition": build_slanext,
    "Xcodec2Model": build_xcodec2,
    "DiffusionGemmaModel": build_diffusion_gemma,
    "CLIPSegForImageSegmentation": build_clipseg,
}

"""Rows for transformers' decoder-only language models.

Signatures by release (../shared notes, checked in the sweep): before 4.55 Llama-style layers
return a tuple (h, [attn], [Cache]); from 4.55 a Tensor. ``layer_past`` families return their
cache at index 1 while ``use_cache`` is on. transformers is never imported: rows hold names.
"""

from .hf_common import transformers_row

# Layers that take `past_key_value(s)`/`cache` and append the cache to a tuple output (<4.55).
LLAMA_STYLE = (
    "LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer",
    "GemmaDecoderLayer", "Gemma2DecoderLayer", "Gemma3DecoderLayer", "Phi3DecoderLayer",
    "PhiDecoderLayer", "OPTDecoderLayer", "CohereDecoderLayer", "StableLmDecoderLayer",
    "Starcoder2DecoderLayer", "OlmoDecoderLayer", "Olmo2DecoderLayer", "GraniteDecoderLayer",
    "PersimmonDecoderLayer", "NemotronDecoderLayer", "GlmDecoderLayer", "HeliumDecoderLayer",
)
# Mixture-of-experts layers of the 4.4x era: (h, [attn], [Cache], [router_logits]).
ROUTER_STYLE = ("MixtralDecoderLayer", "Qwen2MoeDecoderLayer", "Qwen3MoeDecoderLayer",
                "GraniteMoeDecoderLayer", "OlmoeDecoderLayer", "PhimoeDecoderLayer")
# `layer_past` blocks: (h, [present], [attn], ...).
LAYER_PAST_STYLE = ("GPT2Block", "GPTJBlock", "GPTNeoXLayer", "GPTNeoBlock", "FalconDecoderLayer",
                    "BloomBlock", "CodeGenBlock", "GPTBigCodeBlock", "DecisionTransformerGPT2Block")


def _router_cache_slot(argument):
    # The cache sits after the attention weights, before the router logits.
    return 1 + bool(argument("output_attentions"))


ROWS = [
    transformers_row(
        name="transformers Llama-style decoder layer",
        classes=LLAMA_STYLE,
        notes="tuple outputs before 4.55 append the Cache; a Tensor from 4.55",
    ),
    transformers_row(
        name="transformers MoE decoder layer <4.55",
        classes=ROUTER_STYLE,
        versions="<4.55",
        cache_slot=_router_cache_slot,
        notes="router logits are the last slot; the cache goes before them",
    ),
    transformers_row(
        name="transformers MoE decoder layer",
        classes=ROUTER_STYLE,
        versions=">=4.55",
        notes="Tensor output; router logits are collected by hooks on the router",
    ),
    transformers_row(
        name="transformers GPTBigCodeBlock 4.55-4.57",
        classes=("GPTBigCodeBlock",),
        versions=">=4.55,<4.58",
        transformers_checkpointing="no-op",
        notes="the block is a plain nn.Module there: transformers' flag checkpoints nothing",
    ),
    transformers_row(
        name="transformers layer_past block",
        classes=LAYER_PAST_STYLE,
        notes="tuple outputs carry the cache at index 1 while use_cache is on",
    ),
    transformers_row(
        name="transformers CTRL EncoderLayer",
        classes=("EncoderLayer",),
        module_prefix="transformers.models.ctrl.",
        transformers_checkpointing="unsupported",
        grad_args=("x",),
        notes="(h, present, [attn]): the cache at index 1",
    ),
    transformers_row(
        name="transformers OpenAI-GPT Block",
        classes=("Block",),
        module_prefix="transformers.models.openai.",
        transformers_checkpointing="unsupported",
        grad_args=("x",),
    ),
    transformers_row(
        name="transformers CpmAnt block <5",
        classes=("CpmAntTransformerBlock",),
        versions="<5",
        cache_slot="last",
        transformers_checkpointing="unsupported",
        notes="always (h, attn, present): present is None while caching is off",
    ),
    transformers_row(
        name="transformers decoders without transformers checkpointing",
        classes=("JetMoeDecoderLayer", "BarkBlock", "CpmAntTransformerBlock"),
        transformers_checkpointing="unsupported",
    ),
    transformers_row(
        name="transformers RecurrentGemma layer",
        classes=("RecurrentGemmaDecoderLayer",),
        grad_args=("activations",),
        module_state=("recurrent_states", "conv1d_state"),
        # its cache is module state, not an argument: `use_cache` decides what the attention
        # reads (a window of keys, without grad), so turning it off would change the result
        cache_flag=None,
        # its stack resets the recurrent state only while caching: flagged, it turns caching
        # off and the next step starts from this step's state (and its freed graph)
        flag_stack=False,
        notes="the RG-LRU and its conv keep their state on the module and reassign it in every "
              "forward: the recompute starts from the state the forward started from; the "
              "stack keeps its flag off, so it resets the state every step",
    ),
    transformers_row(
        name="transformers xLSTM block",
        classes=("xLSTMBlock",),
        grad_args=("x",),
        copied_args=("state",),
        notes="with a cache its stack copies the block's new recurrent state into the state "
              "tensors it passed in, after the call: the block gets copies of them",
    ),
]

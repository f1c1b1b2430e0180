"""Families outside transformers: a nanoGPT-style model, timm and torchvision blocks.

timm and torchvision run in the `vision` nox session (torch 2.14.1 + torchvision 0.29.1, timm
installed without its dependencies so the pinned torch stays); the default run skips them.
"""

import copy

import pytest
import torch
from models import assert_same_grads, grads_of
from torch import nn
from torch.nn import functional as F

import gcshim


# -- nanoGPT-style: written here from the architecture's description --------------------------
class CausalSelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)
        self.heads = heads

    def forward(self, x):
        batch, length, dim = x.shape
        q, k, v = self.c_attn(x).split(dim, dim=2)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=0.1)
        return self.c_proj(y.transpose(1, 2).reshape(batch, length, dim))


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim),
                                 nn.Dropout(0.1))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab=64, dim=32, heads=4, layers=4, length=16):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, dim), wpe=nn.Embedding(length, dim),
            h=nn.ModuleList(Block(dim, heads) for _ in range(layers)), ln_f=nn.LayerNorm(dim)))
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied, as nanoGPT does

    def forward(self, idx, targets):
        pos = torch.arange(idx.shape[1])
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def test_nanogpt_blocks_found_and_trained_with_dropout(reentrant, checkpoint_calls):
    model = GPT()
    idx = torch.randint(64, (2, 16))
    reference_model = copy.deepcopy(model)
    torch.manual_seed(1)
    reference_model(idx, idx).backward()
    handle = gcshim.apply(model, use_reentrant=reentrant)
    assert handle.layers == [f"transformer.h.{i}" for i in range(4)]
    torch.manual_seed(1)  # same dropout masks: the recompute replays the saved RNG state
    model(idx, idx).backward()
    assert_same_grads(grads_of(reference_model), model)
    assert len(checkpoint_calls) == 4


# -- timm / torchvision ----------------------------------------------------------------------
def _check_blocks(model, inputs, expected_classes, reentrant):
    model.train()
    reference_model = copy.deepcopy(model)
    reference_model(inputs).float().pow(2).mean().backward()
    handle = gcshim.apply(model, use_reentrant=reentrant)
    classes = {type(model.get_submodule(path)).__name__ for path in handle.layers}
    assert classes == expected_classes, handle.report()
    model(inputs).float().pow(2).mean().backward()
    for name, param in reference_model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(model.get_parameter(name).grad, param.grad,
                                       rtol=1e-4, atol=1e-5, msg=name)
    return handle


@pytest.mark.parametrize("name, classes", [
    ("vit_tiny_patch16_224", {"Block"}),
    ("convnext_atto", {"ConvNeXtBlock"}),
    ("resnet18", {"BasicBlock"}),
])
def test_timm_blocks(name, classes, reentrant):
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False, num_classes=10)
    for module in model.modules():  # BatchNorm running stats would update twice: eval them
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    size = 224 if name.startswith("vit") else 64
    _check_blocks(model, torch.randn(2, 3, size, size), classes, reentrant)


def test_torchvision_resnet_blocks(reentrant):
    models = pytest.importorskip("torchvision.models")
    model = models.resnet18(num_classes=10)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    handle = _check_blocks(model, torch.randn(2, 3, 64, 64), {"BasicBlock"}, reentrant)
    assert len(handle.layers) == 8


def test_torch_transformer_decoder_layers(checkpoint_calls):
    layer = nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    model = nn.TransformerDecoder(layer, num_layers=3)
    target, memory = torch.randn(2, 5, 16, requires_grad=True), torch.randn(2, 7, 16)
    reference = copy.deepcopy(model)
    reference(target, memory).sum().backward()
    handle = gcshim.apply(model)
    assert handle.layers == ["layers.0", "layers.1", "layers.2"]
    model(target, memory).sum().backward()
    assert_same_grads(grads_of(reference), model)
    assert len(checkpoint_calls) == 3

"""Gemma 3n with its KV sharing on and a cache in the training forward, on any release.

Before transformers 5.6 the KV-shared layers of Gemma 3n read the keys and values an earlier
layer stored on the cache (`cache.shared_layers`); without a cache they compute their own, so
taking the cache away changes what the model computes. From 5.0 the model makes that cache in
training too (`use_cache` defaults on); 4.53-4.57 use it when the caller passes one. From 5.6
the shared states travel as an argument and the cache only collects.

`check(reentrant, with_row)` trains one step of the tester's tiny text model with a cache,
under gcshim.apply, compares every gradient with the un-checkpointed step and counts the
patched layers backward recomputed; `with_row=False`
takes the table's row for it away, to show what the row prevents. Run as a script it prints one
JSON line per case for the installed transformers (the tests run it on other releases in a
subprocess).
"""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from typing import Any, Dict

import torch
import transformers
from models import grads_of, recomputed_modules, table_without
from packaging.version import Version

import gcshim
from gcshim.core.patching import iter_patched

# the sizes of transformers' own Gemma3nTextModelTester: four layers, the last two sharing
CONFIG = dict(vocab_size=99, vocab_size_per_layer_input=99, hidden_size=16,
              hidden_size_per_layer_input=16, num_hidden_layers=4, num_kv_shared_layers=2,
              layer_types=["full_attention", "sliding_attention"] * 2, num_attention_heads=2,
              num_key_value_heads=2, head_dim=8, altup_num_inputs=2, intermediate_size=21,
              activation_sparsity_pattern=[0.0] * 4)
SHARES_THROUGH_CACHE = Version(transformers.__version__).release < (5, 6)


def _step(model: torch.nn.Module, ids: torch.Tensor, weight: torch.Tensor
          ) -> Dict[str, torch.Tensor]:
    from transformers.cache_utils import DynamicCache

    model.zero_grad(set_to_none=True)
    cache = DynamicCache(config=model.config)
    output = model(input_ids=ids, past_key_values=cache, use_cache=True)
    (output.last_hidden_state * weight).sum().backward()
    return grads_of(model)


def check(reentrant: bool, with_row: bool = True) -> Dict[str, Any]:
    result: Dict[str, Any] = {"transformers": transformers.__version__, "reentrant": reentrant,
                              "with_row": with_row}
    if not hasattr(transformers, "Gemma3nTextConfig"):
        result["absent"] = "no Gemma 3n in this release"
        return result
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nTextModel

    torch.manual_seed(0)
    plain = Gemma3nTextModel(transformers.Gemma3nTextConfig(**CONFIG)).train()
    model = copy.deepcopy(plain)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 99, (2, 7), generator=generator)
    weight = torch.randn(2, 7, 16, generator=generator)
    reference = _step(plain, ids, weight)
    table = (contextlib.nullcontext() if with_row
             else table_without(lambda row: "Gemma 3n" in row.name))
    with table, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gcshim.apply(model, use_reentrant=reentrant)
        with recomputed_modules() as seen:
            grads = _step(model, ids, weight)
        report = gcshim.report(model)
    patched = [module for _path, module, _wrapper in iter_patched(model)]
    result["patched"] = len(patched)
    result["recomputed"] = sum(any(id(inner) in seen for inner in module.modules())
                               for module in patched)
    # every parameter: one with a gradient on only one side is wrong too
    result["wrong"] = sorted(name for name in reference.keys() | grads.keys()
                             if name not in grads or name not in reference
                             or not torch.allclose(grads[name], reference[name],
                                                   rtol=1e-4, atol=1e-6))
    result["statuses"] = sorted({row.status for row in report.rows})
    result["adapters"] = sorted({row.adapter for row in report.rows})
    result["warnings"] = sorted({str(w.message) for w in caught
                                 if issubclass(w.category, gcshim.GcshimWarning)})
    return result


def main() -> None:
    for reentrant in (False, True):
        print(json.dumps(check(reentrant)), flush=True)
    print(json.dumps(check(False, with_row=False)), flush=True)


if __name__ == "__main__":
    main()

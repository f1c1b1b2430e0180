"""gcshim against the anchors, in one process, on the same model and batch.

Conditions: no checkpointing; transformers' own (gradient_checkpointing_enable, non-reentrant);
torch's apply_activation_checkpointing (non-reentrant checkpoint_wrapper on the decoder
layers); gcshim with every layer, every 2nd/3rd/4th, a budget halfway between none and all,
and offload. Then the Llama-style model with PEFT prefix tuning: none, gcshim in both modes
(transformers' own checkpointing drops the prefix and fails, which the report says). Each
condition has its own copy of the model; step times are taken round-robin (one step of each
condition per round) so drift hits all of them alike, and reported as medians. Peak memory is
measured on a separate step: the CUDA allocator, or on CPU a live-tensor tracker
(deterministic, unlike RSS).

    python benchmarks/bench.py                 # sized to the device: small on CPU, ~1B on CUDA
    python benchmarks/bench.py --size small --rounds 5

Writes benchmarks/results/<device>.md and a frontier picture per model beside it.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

import gcshim
from gcshim.budget.frontier import draw_frontier
from gcshim.budget.memory import format_bytes, peak_bytes
from gcshim.core.torch_checkpoint import non_reentrant_saves_inputs

RESULTS = Path(__file__).parent / "results"

# (hidden, layers, heads, intermediate, vocab, batch, sequence)
SIZES = {
    "tiny": (32, 4, 2, 64, 128, 2, 16),  # for the smoke test
    "small": (256, 8, 4, 704, 2048, 4, 256),
    "1b": (2048, 24, 16, 5504, 32000, 4, 2048),
}


def build(kind: str, size: str, device: torch.device, dtype: torch.dtype
          ) -> Tuple[nn.Module, type, Dict[str, torch.Tensor]]:
    """A Llama-style or GPT-2-style causal LM, its decoder layer class, and one batch."""
    hidden, layers, heads, inter, vocab, batch, seq = SIZES[size]
    torch.manual_seed(0)
    if kind == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=heads,
                             intermediate_size=inter, vocab_size=vocab,
                             max_position_embeddings=seq, use_cache=False)
        model, layer = LlamaForCausalLM(config), LlamaDecoderLayer
    else:
        from transformers import GPT2Config, GPT2LMHeadModel
        from transformers.models.gpt2.modeling_gpt2 import GPT2Block

        config = GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_inner=4 * hidden,
                            vocab_size=vocab, n_positions=seq, use_cache=False,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            bos_token_id=0, eos_token_id=0)
        model, layer = GPT2LMHeadModel(config), GPT2Block
    config._attn_implementation = "sdpa"
    model = model.to(device=device, dtype=dtype).train()
    ids = torch.randint(0, vocab, (batch, seq), device=device)
    return model, layer, {"input_ids": ids, "labels": ids, "use_cache": False}


def _step(model: nn.Module, batch: Dict[str, torch.Tensor]) -> None:
    model(**batch).loss.backward()
    for p in model.parameters():
        p.grad = None


@dataclass
class Row:
    label: str
    layers: int
    peak: int
    seconds: float = 0.0
    anchor: bool = False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_step(model: nn.Module, batch: Dict[str, torch.Tensor], device: torch.device) -> float:
    """Seconds one training step takes (the device synchronised on both sides)."""
    _sync(device)
    start = time.perf_counter()
    _step(model, batch)
    _sync(device)
    return time.perf_counter() - start


def _checkpointed_by_torch(model: nn.Module, layer: type) -> int:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    wrapper = functools.partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    apply_activation_checkpointing(model, checkpoint_wrapper_fn=wrapper,
                                   check_fn=lambda m: isinstance(m, layer))
    return sum(type(m).__name__ == "CheckpointWrapper" for m in model.modules())


def conditions(base: nn.Module, layer: type, batch: Dict[str, torch.Tensor],
               device: torch.device) -> Tuple[Dict[str, nn.Module], Dict[str, Row], str]:
    """A model copy per condition, set up, with its layer count and measured peak."""
    copies: Dict[str, nn.Module] = {}
    rows: Dict[str, Row] = {}
    total = sum(isinstance(m, layer) for m in base.modules())

    def add(label: str, model: nn.Module, layers: int, anchor: bool = False) -> None:
        _step(model, batch)  # warm-up (lazy init, allocator)
        peak = peak_bytes(lambda: _step(model, batch), device)
        copies[label] = model
        rows[label] = Row(label, layers, peak, anchor=anchor)

    add("none", copy.deepcopy(base), 0, anchor=True)
    own = copy.deepcopy(base)
    if hasattr(own, "activation_checkpointing_enable"):  # transformers >= 5.24's name
        own.activation_checkpointing_enable({"use_reentrant": False})
    else:
        own.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    add("transformers", own, total, anchor=True)
    wrapped = copy.deepcopy(base)
    add("torch AC", wrapped, _checkpointed_by_torch(wrapped, layer), anchor=True)
    for label, options in [("gcshim all", {}), ("gcshim every=2", {"every": 2}),
                           ("gcshim every=3", {"every": 3}), ("gcshim every=4", {"every": 4})]:
        model = copy.deepcopy(base)
        handle = gcshim.apply(model, **options)
        add(label, model, len(handle.layers))
    budget = (rows["none"].peak + rows["gcshim all"].peak) // 2
    model = copy.deepcopy(base)
    handle = gcshim.apply(model, budget=budget, example_inputs=batch)
    add("gcshim budget", model, len(handle.layers))
    model = copy.deepcopy(base)
    # torch 2.0's non-reentrant checkpoint cannot offload: reentrant there
    handle = gcshim.apply(model, offload=True, use_reentrant=not non_reentrant_saves_inputs())
    add("gcshim offload", model, len(handle.layers))
    return copies, rows, format_bytes(budget) + f" ({budget} bytes)"


def _rss_peak(work: Callable[[], None]) -> int:
    """Peak resident bytes of `work()` above the resident bytes before it (Linux: the peak is
    reset through /proc/self/clear_refs). With MALLOC_MMAP_THRESHOLD_ set low, large tensors
    are mmapped and returned on free, so this follows live tensor memory (it matches the
    live-tensor tracker on eager steps to 0.1%)."""

    def status(field: str) -> int:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) * 1024

    Path("/proc/self/clear_refs").write_text("5")
    before = status("VmRSS")
    work()
    return status("VmHWM") - before


def compile_conditions(base: nn.Module, batch: Dict[str, torch.Tensor], device: torch.device,
                       rounds: int) -> Tuple[Dict[str, Row], str]:
    """torch.compile alone, with its activation memory budget at 0.5, eager full gcshim
    checkpointing, and gcshim + compile, one after another: each compiles after
    torch._dynamo.reset() (or it would reuse the previous graph, and its memory budget), which
    would also recompile the earlier ones, so these are not timed round-robin. Peak on CUDA: the
    allocator. On CPU inductor's
    buffers are invisible to the live-tensor tracker, so every row here (the eager one too)
    is the peak resident memory of the step (see _rss_peak)."""
    import torch._dynamo
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    rows: Dict[str, Row] = {}
    total = len(gcshim.apply(copy.deepcopy(base)).layers)

    def measure(model: nn.Module) -> int:
        _step(model, batch)
        if device.type == "cuda":
            return peak_bytes(lambda: _step(model, batch), device)
        return _rss_peak(lambda: _step(model, batch))

    def add(label: str, applied: bool, compile_it: bool = True, memory_budget: float = 1.0,
            anchor: bool = False) -> None:
        torch._dynamo.reset()  # else the first compile's graph (and budget) is reused
        model = copy.deepcopy(base)
        if applied:
            gcshim.apply(model)
        if compile_it:
            model = torch.compile(model)
            # compiled now, under this budget (no cache: it would hand back another budget's)
            with functorch_config.patch(activation_memory_budget=memory_budget), \
                    inductor_config.patch(force_disable_caches=True):
                _step(model, batch)
        peak = measure(model)
        times = [_timed_step(model, batch, device) for _ in range(rounds)]
        rows[label] = Row(label, total if applied else 0, peak, statistics.median(times),
                          anchor=anchor)

    add("compile", applied=False, anchor=True)
    add("compile, memory budget 0.5", applied=False, memory_budget=0.5, anchor=True)
    add("eager gcshim all", applied=True, compile_it=False, anchor=True)
    add("gcshim all + compile", applied=True)
    return rows, ("CUDA allocator" if device.type == "cuda" else
                          "peak resident memory of the step (glibc mmap threshold 64 KiB, so "
                          "freed tensors leave the resident set); the compiled steps' buffers "
                          "are invisible to the live-tensor tracker")


def compile_section(kind: str, rows: Dict[str, Row], how: str, picture: str) -> List[str]:
    plain = rows["compile"]
    lines = [f"## {kind} under torch.compile", "", f"Peak: {how}.", "",
             "| condition | layers checkpointed | peak | median step | peak / compile | "
             "step / compile |", "|---|---|---|---|---|---|"]
    for row in rows.values():
        lines.append(f"| {row.label}{' (anchor)' if row.anchor else ''} | {row.layers} | "
                     f"{format_bytes(row.peak)} | {row.seconds * 1e3:.1f} ms | "
                     f"{_ratio(row.peak, plain.peak)} | {_ratio(row.seconds, plain.seconds)} |")
    ours, eager = rows["gcshim all + compile"], rows["eager gcshim all"]
    lines += ["", f"gcshim + compile against eager full checkpointing: peak "
              f"{_ratio(ours.peak, eager.peak)}, step {_ratio(ours.seconds, eager.seconds)}; "
              f"against compile's memory budget 0.5: peak "
              f"{_ratio(ours.peak, rows['compile, memory budget 0.5'].peak)}, step "
              f"{_ratio(ours.seconds, rows['compile, memory budget 0.5'].seconds)}.", "",
              f"![memory/time frontier under compile, {kind}]({picture})", ""]
    return lines


def compile_part(base: nn.Module, batch: Dict[str, torch.Tensor], device: torch.device,
                 rounds: int, out: Path, slug: str, name: str) -> List[str]:
    rows, how = compile_conditions(base, batch, device, rounds)
    picture = f"{slug}-llama-compile.png"
    draw_frontier([(r.label, r.seconds, r.peak) for r in rows.values()], str(out / picture),
                  f"llama under torch.compile on {name}",
                  anchors=[r.label for r in rows.values() if r.anchor])
    return compile_section("llama", rows, how, picture)


def _compile_part_in_subprocess(args: argparse.Namespace, size: str, rounds: int) -> List[str]:
    """On CPU the compile rows measure resident memory, which needs large tensors mmapped
    (MALLOC_MMAP_THRESHOLD_): that slows eager steps, so it runs in a process of its own."""
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "section.json"
        subprocess.run([sys.executable, __file__, "--device", args.device, "--size", size,
                        "--rounds", str(rounds), "--out", str(args.out),
                        "--compile-section", str(result)],
                       env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}, check=True)
        return json.loads(result.read_text())


def round_robin(copies: Dict[str, nn.Module], rows: Dict[str, Row],
                batch: Dict[str, torch.Tensor], device: torch.device, rounds: int) -> None:
    times: Dict[str, List[float]] = {label: [] for label in copies}
    labels = list(copies)
    for round_index in range(rounds):
        # each round starts at a different condition: no condition always runs first or last
        start_at = round_index % len(labels)
        for label in labels[start_at:] + labels[:start_at]:
            times[label].append(_timed_step(copies[label], batch, device))
    for label, samples in times.items():
        rows[label].seconds = statistics.median(samples)


# -- prefix tuning --------------------------------------------------------------------------
PREFIX_TOKENS = 16


def prefix_conditions(size: str, device: torch.device, dtype: torch.dtype, rounds: int
                      ) -> Tuple[Dict[str, Row], str]:
    """PEFT prefix tuning of the Llama-style model: the learned prefix reaches every layer
    through the cache, which gcshim keeps (transformers' own checkpointing drops it, and the
    step fails). Conditions: none, gcshim all non-reentrant and reentrant."""
    import peft

    base, layer, batch = build("llama", size, device, dtype)
    base = peft.get_peft_model(base, peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=PREFIX_TOKENS)).to(device)
    batch = {**batch, "use_cache": True}
    total = sum(isinstance(m, layer) for m in base.modules())
    rows: Dict[str, Row] = {}
    copies: Dict[str, nn.Module] = {}
    for label, reentrant in (("none", None), ("gcshim all", False),
                             ("gcshim all, reentrant", True)):
        model = copy.deepcopy(base)
        if reentrant is not None:
            gcshim.apply(model, use_reentrant=reentrant)
        _step(model, batch)  # warm-up (and gcshim's first-call checks)
        rows[label] = Row(label, 0 if reentrant is None else total,
                          peak_bytes(lambda model=model: _step(model, batch), device),
                          anchor=reentrant is None)
        copies[label] = model
    own = copy.deepcopy(base)
    own.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        _step(own, batch)
        verdict = "runs"
    except Exception as error:  # the prefix dropped: shapes no longer agree
        verdict = f"fails: `{type(error).__name__}: {str(error).splitlines()[0][:120]}`"
    round_robin(copies, rows, batch, device, rounds)
    return rows, verdict


def prefix_section(rows: Dict[str, Row], verdict: str) -> List[str]:
    plain = rows["none"]
    lines = [f"## llama with PEFT prefix tuning ({PREFIX_TOKENS} virtual tokens)", "",
             f"transformers' own checkpointing with the prefix: {verdict}.", "",
             "| condition | layers checkpointed | peak | median step | peak / none | "
             "step / none |", "|---|---|---|---|---|---|"]
    for row in rows.values():
        lines.append(f"| {row.label}{' (anchor)' if row.anchor else ''} | {row.layers} | "
                     f"{format_bytes(row.peak)} | {row.seconds * 1e3:.1f} ms | "
                     f"{_ratio(row.peak, plain.peak)} | {_ratio(row.seconds, plain.seconds)} |")
    return lines + [""]


# -- microbenchmarks (CPU, tiny layers) -----------------------------------------------------
def _median_seconds(work: Callable[[], None], repeats: int = 7) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def wrapper_overhead_us(calls: int = 20000) -> Tuple[float, float, float]:
    """Forward+backward of one tiny checkpointed layer: plain torch checkpoint call vs a
    gcshim-patched layer, paired call by call (order alternating) so that the machine's drift,
    which on a shared VM moves the plain call by a third within minutes, cancels out. Returns
    (plain us, gcshim us, overhead us) per call: medians, the overhead the median of the
    paired differences."""
    from torch.utils.checkpoint import checkpoint

    layer = nn.Linear(8, 8)
    x = torch.randn(2, 8, requires_grad=True)

    def plain() -> None:
        checkpoint(layer, x, use_reentrant=False).sum().backward()

    twin = copy.deepcopy(layer)  # patched separately: `plain` must not nest gcshim inside
    holder = nn.Sequential(twin)
    gcshim.apply(holder, layers=nn.Linear)

    def patched() -> None:
        twin(x).sum().backward()

    for _ in range(50):  # warm-up; the first calls settle the layer
        plain()
        patched()
    clock = time.perf_counter
    plains, patcheds, differences = [], [], []
    for index in range(calls):
        if index % 2:
            start = clock()
            plain()
            middle = clock()
            patched()
            plain_s, patched_s = middle - start, clock() - middle
        else:
            start = clock()
            patched()
            middle = clock()
            plain()
            patched_s, plain_s = middle - start, clock() - middle
        plains.append(plain_s * 1e6)
        patcheds.append(patched_s * 1e6)
        differences.append((patched_s - plain_s) * 1e6)
    gcshim.remove(holder)
    return (statistics.median(plains), statistics.median(patcheds),
            statistics.median(differences))


def apply_remove_ms(layers: int = 1000) -> float:
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    model = nn.Sequential(*[Tiny() for _ in range(layers)])

    def cycle() -> None:
        gcshim.apply(model).remove()

    cycle()
    return _median_seconds(cycle) * 1e3


# -- report ---------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "n/a"


def _check(ok: bool) -> str:
    return "met" if ok else "**missed**"


def model_section(kind: str, rows: Dict[str, Row], budget: str, device: torch.device,
                  picture: str) -> List[str]:
    own, full = rows["transformers"], rows["gcshim all"]
    lines = [f"## {kind}", "", f"Budget for `gcshim budget`: {budget}, halfway between the "
             "peaks of none and gcshim all.", "",
             "| condition | layers checkpointed | peak | median step | peak / none | "
             "peak / transformers | step / transformers |",
             "|---|---|---|---|---|---|---|"]
    for row in rows.values():
        lines.append(
            f"| {row.label}{' (anchor)' if row.anchor else ''} | {row.layers} | "
            f"{format_bytes(row.peak)} | {row.seconds * 1e3:.1f} ms | "
            f"{_ratio(row.peak, rows['none'].peak)} | {_ratio(row.peak, own.peak)} | "
            f"{_ratio(row.seconds, own.seconds)} |")
    budget_row = rows["gcshim budget"]
    budget_bytes = int(budget.split("(")[1].split()[0])
    uniform = [r for r in rows.values() if r.label.startswith("gcshim every=")
               or r.label == "gcshim all"]
    fitting = [r for r in uniform if r.peak <= budget_bytes]
    best = min(fitting, key=lambda r: r.seconds) if fitting else None
    lines += ["", "Targets (ratios from this run):", ""]
    lines.append(f"- gcshim all peak / transformers' own: {_ratio(full.peak, own.peak)} "
                 f"(target <= 1.00): {_check(full.peak <= own.peak)}")
    lines.append(f"- gcshim all step / transformers' own: {_ratio(full.seconds, own.seconds)} "
                 f"(target <= 1.03): {_check(full.seconds <= 1.03 * own.seconds)}")
    lines.append(f"- budget plan peak <= budget: {format_bytes(budget_row.peak)} <= "
                 f"{budget.split(' (')[0]}: {_check(budget_row.peak <= budget_bytes)}")
    if best is not None:
        lines.append(f"- budget plan step / best uniform plan that fits ({best.label}): "
                     f"{_ratio(budget_row.seconds, best.seconds)} (target <= 1.03): "
                     f"{_check(budget_row.seconds <= 1.03 * best.seconds)}")
    offload = rows["gcshim offload"]
    if device.type == "cuda":
        lines.append(f"- offload peak / gcshim all: {_ratio(offload.peak, full.peak)} (target "
                     f"<= 0.92): {_check(offload.peak <= 0.92 * full.peak)}; step: "
                     f"{_ratio(offload.seconds, full.seconds)} (target <= 1.10): "
                     f"{_check(offload.seconds <= 1.10 * full.seconds)}")
    else:
        lines.append("- offload: a no-op on CPU (no CUDA stream to copy on), so it measures "
                     "as gcshim all; its targets need a CUDA device")
    lines += ["", f"![memory/time frontier, {kind}]({picture})", ""]
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default=None)
    parser.add_argument("--models", nargs="+", default=["llama", "gpt2"],
                        choices=["llama", "gpt2"])
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="skip the torch.compile conditions (Llama-style model)")
    parser.add_argument("--compile-section", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=20000,
                        help="paired layer calls in the wrapper-overhead microbenchmark")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    on_cuda = device.type == "cuda"
    size = args.size or ("1b" if on_cuda else "small")
    dtype = torch.bfloat16 if on_cuda else torch.float32
    rounds = args.rounds or 36  # a multiple of the 9 conditions: each starts a round alike
    name = device_name(device)
    if args.compile_section is not None:  # the child of _compile_part_in_subprocess
        base, _layer, batch = build("llama", size, device, dtype)
        section = compile_part(base, batch, device, rounds, args.out, _slug(name), name)
        args.compile_section.write_text(json.dumps(section))
        return 0
    import transformers

    lines = [
        f"# Benchmark: {name}", "",
        f"- device: {name} ({device.type}; {torch.get_num_threads()} CPU threads); size "
        f"`{size}` {SIZES[size]} "
        "(hidden, layers, heads, intermediate, vocab, batch, sequence); dtype "
        f"{str(dtype).replace('torch.', '')}",
        f"- python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, gcshim {gcshim.__version__}",
        f"- date {time.strftime('%Y-%m-%d')}; {rounds} timed rounds, medians; peak = memory a "
        "step allocates on top of what was allocated before it ("
        + ("CUDA allocator" if on_cuda else "live-tensor tracker") + ")",
        f"- command: `{' '.join(['python benchmarks/bench.py', *(argv or sys.argv[1:])])}`",
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    slug = _slug(name)
    for kind in args.models:
        base, layer, batch = build(kind, size, device, dtype)
        copies, rows, budget = conditions(base, layer, batch, device)
        round_robin(copies, rows, batch, device, rounds)
        picture = f"{slug}-{kind}.png"
        draw_frontier([(r.label, r.seconds, r.peak) for r in rows.values()],
                      str(args.out / picture), f"{kind} on {name}",
                      anchors=[r.label for r in rows.values() if r.anchor])
        lines += model_section(kind, rows, budget, device, picture)
        print("\n".join(model_section(kind, rows, budget, device, picture)), flush=True)
        del copies
        if args.compile and kind == "llama":
            section = (compile_part(base, batch, device, rounds, args.out, slug, name)
                       if device.type == "cuda" else _compile_part_in_subprocess(args, size,
                                                                                 rounds))
            lines += section
            print("\n".join(section), flush=True)
        del base
    if "llama" in args.models:
        section = prefix_section(*prefix_conditions(size, device, dtype, rounds))
        lines += section
        print("\n".join(section), flush=True)
    plain_us, patched_us, overhead_us = wrapper_overhead_us(args.calls)
    cycle_ms = apply_remove_ms()
    lines += [
        "## Microbenchmarks (CPU)", "",
        f"- wrapper overhead per layer call (forward + backward of a tiny Linear, gcshim-patched "
        f"vs a plain `torch.utils.checkpoint.checkpoint` call): {plain_us:.1f} us plain, "
        f"{patched_us:.1f} us patched (medians); overhead, the median of {args.calls:,} "
        f"call-by-call paired differences: {overhead_us:.1f} us (target <= 8): "
        f"{_check(overhead_us <= 8)}",
        f"- `apply` + `remove` on a 1,000-layer model: {cycle_ms:.1f} ms (target < 100): "
        f"{_check(cycle_ms < 100)}", "",
    ]
    out = args.out / f"{slug}.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines[-4:]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

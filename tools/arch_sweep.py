"""gcshim's architecture sweep over the installed transformers.

For every model type transformers ships, build a tiny random model (tools/tiny_models.py) and
run one training step: without checkpointing, with transformers' own checkpointing (where the
model claims support) and with ``gcshim.apply(model)``, in four conditions: non-reentrant and
reentrant, each with ``config.use_cache = False`` at the top level ("cache-off", what
transformers' own test does) and with the config's default ("cache-default", what a legacy
script does). Each run records status, gradient agreement with the un-checkpointed run, how
many module calls the backward recomputed, and the peak bytes a live-tensor tracker counts.

Each architecture runs in its own forked process with a timeout; results are JSON lines.

    python -m tools.arch_sweep --out docs/sweep/transformers-5.24.0.jsonl [--only llama,gpt2]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import random
import signal
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch

try:
    import numpy
except ImportError:  # pragma: no cover - numpy comes with transformers
    numpy = None

import gcshim  # noqa: E402
from gcshim.budget.memory import peak_bytes  # noqa: E402
from tools import stamp, tester_models, tiny_models  # noqa: E402

# the loss of one step: tiny_models' for its models; tester_models' weighted one for testers'
_LOSS = [tiny_models.loss_of]
LAYER_LADDER = (2, 6, 12)  # Zamba ties its shared block: two hybrid layers need 12
RUN_SECONDS = 60  # a step (two for gcshim); transformers' own reentrant WavLM recursion never ends
CONDITIONS = [(reentrant, cache) for reentrant in (False, True) for cache in ("off", "default")]
GCSHIM_DIR = str(Path(gcshim.__file__).resolve().parent)


def condition_name(reentrant: bool, cache: str) -> str:
    return f"{'reentrant' if reentrant else 'non-reentrant'}/cache-{cache}"


class CallCounter:
    """Counts module calls (forward pre-hooks of every module), recomputes included."""

    def __init__(self) -> None:
        self.calls = 0
        self._handle = torch.nn.modules.module.register_module_forward_pre_hook(self._hook)

    def _hook(self, module: Any, args: Any) -> None:
        self.calls += 1

    def close(self) -> None:
        self._handle.remove()


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text[:200]}"


def _inside_gcshim(error: BaseException) -> bool:
    """Whether the innermost frame of the error's traceback is gcshim's own code."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and frames[-1].filename.startswith(GCSHIM_DIR)


def _step(model: Any, inputs: Dict[str, Any], counter: CallCounter,
          measure: bool = True) -> Dict[str, Any]:
    model.train()
    model.zero_grad(set_to_none=True)
    before = counter.calls
    torch.manual_seed(0)
    random.seed(0)
    if numpy is not None:  # wav2vec2-style models draw their span masks with numpy
        numpy.random.seed(0)
    losses: List[torch.Tensor] = []

    def work() -> None:
        loss = _LOSS[0](model(**inputs))
        loss.backward()
        losses.append(loss.detach())

    peak = peak_bytes(work, torch.device("cpu")) if measure else (work() or 0)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"loss": float(losses[0]), "grads": grads, "calls": counter.calls - before,
            "peak": peak}


def errors_of(reference: Dict[str, torch.Tensor], grads: Dict[str, torch.Tensor]
              ) -> Dict[str, float]:
    """Each gradient's largest absolute difference from the reference (those both have)."""
    return {name: float((want.double() - grads[name].double()).abs().max())
            for name, want in reference.items() if grads.get(name) is not None}


def compare(reference: Dict[str, torch.Tensor], grads: Dict[str, torch.Tensor],
            trainable: List[str], floors: Optional[Dict[str, float]] = None) -> Optional[str]:
    """None when the gradients agree with the reference (within 1e-5, or the gradient's own
    floor in `floors`, plus 1e-3 of its scale), else what differs."""
    for name in trainable:
        want, got = reference.get(name), grads.get(name)
        if (want is None) != (got is None):
            nonzero = want is not None and bool(want.abs().sum() > 0)
            if want is None or nonzero or got is not None and bool(got.abs().sum() > 0):
                return f"{name}: grad {'missing' if got is None else 'unexpected'}"
            continue
        if want is None:
            continue
        scale = float(want.abs().max())
        error = float((want.double() - got.double()).abs().max())
        floor = max(1e-5, floors.get(name, 0.0)) if floors else 1e-5
        if error > floor + 1e-3 * scale:
            return f"{name}: max error {error:.2e} (scale {scale:.2e})"
    return None


def _run(base: Any, inputs: Dict[str, Any], cache: str, setup: Callable[[Any], None],
         counter: CallCounter, measure: bool = True, warm_up: bool = False) -> Dict[str, Any]:
    """One step (after a first, unjudged one with `warm_up`: gcshim checks each layer in
    its first step, non-reentrant, and checkpoints in the mode asked from the second)."""
    model = copy.deepcopy(base)
    if cache == "off":
        model.config.use_cache = False
    setup(model)
    if warm_up:
        _step(model, inputs, counter, measure=False)
    return _step(model, inputs, counter, measure)


def _double(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.double()
    return value


# float32 rounds at 1.2e-7, float64 at 2.2e-16: rounding noise shrinks by about 5e8 from one to
# the other, a lost or wrong gradient not at all. What is left in float64 of a float32 error
# is taken for rounding below this fraction of that gradient's float32 error (a huge loss
# makes float64's own rounding noise larger than the absolute floor: D-FINE's tester, a bias
# whose gradient is zero in exact arithmetic, 2.5e-5 in float64 where float32 has 256).
ROUNDING_SHRINKS = 1e-6


def _agrees_in_float64(base: Any, inputs: Dict[str, Any], cache: str,
                       setup: Callable[[Any], None], counter: CallCounter,
                       trainable: List[str], warm_up: bool,
                       float32_errors: Optional[Dict[str, float]] = None) -> bool:
    """Whether a float32 mismatch (each gradient's error in `float32_errors`) disappears in
    float64 (where rounding is 1e-16, and a lost or wrong gradient stays as large as it was)."""
    try:
        base64 = copy.deepcopy(base).double()
        inputs64 = {key: _double(value) for key, value in inputs.items()}
        with _time_limit(RUN_SECONDS):
            # the same step of the plain model (its second, where gcshim's is judged on its
            # second: alike for all but a model whose step updates what its forward reads)
            plain = _run(base64, inputs64, cache, lambda model: None, counter, False,
                         warm_up=warm_up)
            checked = _run(base64, inputs64, cache, setup, counter, False, warm_up=warm_up)
    except Exception:  # a model that cannot run in float64 keeps its float32 verdict
        return False
    floors = {name: ROUNDING_SHRINKS * error for name, error in (float32_errors or {}).items()}
    return compare(plain["grads"], checked["grads"], trainable, floors) is None


def _hf_enable(reentrant: bool) -> Callable[[Any], None]:
    def setup(model: Any) -> None:
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)({"use_reentrant": reentrant})

    return setup


def _gcshim_apply(reentrant: bool, seen: Dict[str, Any]) -> Callable[[Any], None]:
    def setup(model: Any) -> None:
        handle = gcshim.apply(model, use_reentrant=reentrant)
        rows = [row for row in handle.report().rows if row.status == "checkpointed"]
        seen["layers"] = len(rows)
        seen["adapters"] = sorted({row.adapter for row in rows})
        seen["source"] = handle.source
        seen["_handle"] = handle  # read after the step: what the first call found

    return setup


def _found(seen: Dict[str, Any]) -> None:
    """What gcshim's first checkpointed calls found (side_channels), from the report rows."""
    handle = seen.pop("_handle", None)
    if handle is None:
        return
    rows = [row for row in handle.report().rows if row.status == "checkpointed"]
    fallbacks = [row.note for row in rows if "fallback" in getattr(row, "mode", "")]
    replays = [row.note for row in rows if "replays" in getattr(row, "note", "")]
    if fallbacks:
        seen["fallbacks"] = len(fallbacks)
        seen["fallback_why"] = fallbacks[0][:200]
    if replays:
        seen["replays"] = len(replays)


class StepTimeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise StepTimeout(f"one step ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _keeps_cache(seen: Dict[str, Any]) -> bool:
    """Whether a row that leaves cache-carrying calls un-checkpointed applied."""
    names = set(seen.get("adapters", ()))
    return any(row.name in names and row.cache_policy == "run-as-is"
               for row in gcshim.adapters.adapter_rows())


def _verdict(run: Callable[[], Dict[str, Any]], reference: Dict[str, Any],
             trainable: List[str],
             second_step: Optional[Callable[[], Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Run a checkpointed step and judge it against the un-checkpointed reference (where the
    checkpointed step is a model's second, and its gradients differ from the first plain
    step's, against the second plain step: a forward reading state its step updated, such
    as I-BERT's quantisation ranges, gives other gradients in its second step)."""
    try:
        with _time_limit(RUN_SECONDS):
            result = run()
    except StepTimeout as error:
        return {"status": "timeout", "error": _short(error), "in_gcshim": False}
    except RecursionError as error:
        return {"status": "error", "error": _short(error), "in_gcshim": False}
    except Exception as error:  # the sweep records every failure, it never stops on one
        return {"status": "error", "error": _short(error), "in_gcshim": _inside_gcshim(error)}
    mismatch = compare(reference["grads"], result["grads"], trainable)
    first_step_mismatch = None
    if mismatch is not None and second_step is not None:
        try:
            with _time_limit(RUN_SECONDS):
                second = second_step()
        except Exception:  # no second plain step: the first step's verdict stands
            second = None
        if second is not None and compare(reference["grads"], second["grads"],
                                          trainable) is not None:
            first_step_mismatch = mismatch
            mismatch = compare(second["grads"], result["grads"], trainable)
            reference = dict(reference, grads=second["grads"])
    recomputed = result["calls"] - reference["calls"]
    status = "pass"
    if mismatch is not None:
        status = "wrong-grads"
    elif recomputed <= 0:
        status = "no-recompute"
    verdict = {"status": status, "mismatch": mismatch, "recomputed": recomputed}
    if mismatch is not None:  # for the float64 rerun, not for the record
        verdict["_errors"] = errors_of(reference["grads"], result["grads"])
    if first_step_mismatch is not None:
        verdict["judged_on"] = "second plain step"  # the first plain step's: another state
    if result["peak"]:
        verdict.update(peak=result["peak"],
                       peak_ratio=round(result["peak"] / reference["peak"], 3))
    return verdict


def _working_inputs(base: Any, variants: List[Dict[str, Any]], counter: CallCounter) -> Any:
    """The first input variant an un-checkpointed step accepts, else the first error."""
    errors = []
    for inputs in variants:
        try:
            _run(base, inputs, "off", lambda model: None, counter, measure=False)
            return inputs
        except Exception as error:
            errors.append(_short(error))
    return " | ".join(errors)


def _references(base: Any, inputs: Dict[str, Any], counter: CallCounter) -> Any:
    """The un-checkpointed step per cache condition, or why it cannot run."""
    references = {}
    for cache in ("off", "default"):
        try:
            references[cache] = _run(base, inputs, cache, lambda model: None, counter)
        except Exception as error:
            return _short(error)
        if not torch.isfinite(torch.tensor(references[cache]["loss"])):
            return "loss is not finite"
    # a model whose plain step is not repeatable here (uninitialised memory, say: SEW-D on
    # torch 2.1) has no reference for checkpointing to match: found now, before any
    # checkpointed run (a fault of gcshim's that leaked into a later plain step would
    # otherwise pass for an unstable baseline)
    trainable = [n for n, p in base.named_parameters() if p.requires_grad]
    for cache in ("off", "default"):
        again = _run(base, inputs, cache, lambda model: None, counter, measure=False)
        differs = compare(references[cache]["grads"], again["grads"], trainable)
        if differs is not None:
            return f"two un-checkpointed steps differ ({differs}, cache {cache})"
    return references


def _conditions(record: Dict[str, Any], base: Any, inputs: Dict[str, Any],
                references: Dict[str, Any], counter: CallCounter,
                save: Optional[Callable[[Dict[str, Any]], None]]) -> Dict[str, Any]:
    """Every condition's runs of one model, gcshim's and transformers' own, into `record`."""
    record["class"] = type(base).__name__
    record["hf_supports"] = bool(getattr(base, "supports_gradient_checkpointing", False))
    trainable = [n for n, p in base.named_parameters() if p.requires_grad]
    record["conditions"] = {}
    record["status"] = "ran"
    # gcshim's runs first, transformers' after: a run that hangs in C++ (transformers' own
    # reentrant WavLM) ends the process, and the parent keeps what was saved before it
    for who in ("gcshim", "transformers"):
        for reentrant, cache in CONDITIONS:
            reference = references[cache]
            entry = record["conditions"].setdefault(condition_name(reentrant, cache),
                                                    {"peak_none": reference["peak"]})
            if who == "transformers" and not record["hf_supports"]:
                entry[who] = {"status": "unsupported"}
                continue
            entry[who] = {"status": "timeout"}  # until the run returns
            if save is not None:
                save(record)
            seen: Dict[str, Any] = {}
            setup = _gcshim_apply(reentrant, seen) if who == "gcshim" else _hf_enable(reentrant)
            # peak memory only for gcshim: the live-tensor tracker doubles a run's time
            run = functools.partial(_run, base, inputs, cache, setup, counter, who == "gcshim",
                                    warm_up=who == "gcshim")
            second_step = functools.partial(_run, base, inputs, cache, lambda model: None,
                                            counter, False, warm_up=True)
            entry[who] = _verdict(run, reference, trainable,
                                  second_step if who == "gcshim" else None)
            _found(seen)
            entry[who].update(seen)
            errors = entry[who].pop("_errors", None)
            if entry[who]["status"] == "wrong-grads":
                # (the baseline's repeatability was checked before any checkpointed run)
                if _agrees_in_float64(base, inputs, cache, setup, counter, trainable,
                                      warm_up=who == "gcshim",
                                      float32_errors=errors):
                    # float32 rounding (another summation order in backward) on a gradient
                    # that is zero in exact arithmetic: a GroupNorm's input bias, say
                    entry[who]["status"] = "pass"
                    entry[who]["float32_rounding"] = entry[who].pop("mismatch")
                    entry[who]["mismatch"] = None
            if entry[who]["status"] == "error" and who == "gcshim":
                # gcshim is judged on a second step: a model whose own second step fails
                # (a recurrent state carried over with its freed graph) has no reference there
                try:
                    with _time_limit(RUN_SECONDS):
                        _run(base, inputs, cache, lambda model: None, counter, False,
                             warm_up=True)
                except Exception as error:
                    entry[who].update(status="no-second-step", plain_error=_short(error))
            if entry[who]["status"] == "no-recompute" and _keeps_cache(seen):
                entry[who]["status"] = "cache-kept"  # correct, by design not checkpointed
    return record


def run_architecture(model_type: str,
                     save: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """One architecture's runs; `save` gets the record as it grows (for the forked runner)."""
    import transformers

    record: Dict[str, Any] = {"arch": model_type, "transformers": transformers.__version__,
                              "torch": torch.__version__.split("+")[0]}
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        record.update(status="absent", error="not in this transformers release")
        return record
    counter = CallCounter()
    try:
        for layers in LAYER_LADDER:  # hybrids (Zamba, Bamba, ...) have their attention later on
            try:
                base, variants = tiny_models.build(model_type, layers=layers)
            except tiny_models.NoModelClass as error:
                record.update(status="sub-model", error=_short(error))
                return record
            except Exception as error:
                record.update(status="no-build", error=_short(error))
                continue
            inputs = _working_inputs(base, variants, counter)
            if isinstance(inputs, str):
                record.update(status="no-baseline", error=inputs)
                continue
            references = _references(base, inputs, counter)
            if isinstance(references, dict):
                break
            record.update(status="no-baseline", error=references)
        else:
            return record
        record.pop("error", None)
        record["layers_built"] = layers
        return _conditions(record, base, inputs, references, counter, save)
    finally:
        counter.close()  # a global hook: never leave it behind


def run_testers(model_dir: str, save: Callable[[List[Dict[str, Any]]], None]
                ) -> List[Dict[str, Any]]:
    """Each model class that transformers' tests build in `model_dir`, from the tester's own
    config and inputs, with a loss that reaches every floating output (tester_models)."""
    import transformers

    _LOSS[0] = tester_models.weighted_loss
    records: List[Dict[str, Any]] = []
    counter = CallCounter()
    try:
        try:
            built = list(tester_models.cases(model_dir))
        except Exception as error:
            return [{"arch": model_dir, "source": "testers", "status": "no-build",
                     "transformers": transformers.__version__, "error": _short(error)}]
        if not built:  # integration tests only (CamemBERT, RAG, the encoder-decoder wrappers)
            return [{"arch": model_dir, "source": "testers", "status": "no-tester",
                     "transformers": transformers.__version__}]
        for name, model_class, config, inputs in built:
            record: Dict[str, Any] = {"arch": name, "source": "testers",
                                      "transformers": transformers.__version__,
                                      "torch": torch.__version__.split("+")[0]}
            records.append(record)
            try:
                torch.manual_seed(0)
                base = model_class(config)
            except Exception as error:
                record.update(status="no-build", error=_short(error))
                continue
            judge(record, base, inputs, counter, lambda _record: save(records))
        return records
    finally:
        counter.close()


def judge(record: Dict[str, Any], base: Any, inputs: Dict[str, Any], counter: CallCounter,
          save: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Every condition's runs of a model built elsewhere (a tester's, a test's) with `inputs`,
    into `record`: its plain step first, which must run and repeat."""
    working = _working_inputs(base, [inputs], counter)
    references = working if isinstance(working, str) else _references(base, working, counter)
    if isinstance(references, str):
        record.update(status="no-baseline", error=references)
        return record
    return _conditions(record, base, working, references, counter, save)


# -- the forked runner -----------------------------------------------------------------------
def _child(model_type: str, path: str, testers: Optional[Path]) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    import logging

    logging.disable(logging.WARNING)

    def save(record: Any) -> None:  # a record, or a list of them (testers)
        with open(path + ".tmp", "w") as handle:
            json.dump(record, handle)
        os.replace(path + ".tmp", path)

    try:
        if testers is not None:
            tester_models.prepare(testers)
            record: Any = run_testers(model_type, save)
        else:
            record = run_architecture(model_type, save)
    except BaseException as error:  # noqa: B036 - anything at all goes into the record
        record = {"arch": model_type, "status": "sweep-error", "error": _short(error)}
    save(record)


def sweep(model_types: List[str], out: Path, timeout: float, jobs: int,
          append: bool = False, testers: Optional[Path] = None) -> None:
    pending = list(model_types)
    running: Dict[int, tuple] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    fresh = not append or not out.exists() or out.stat().st_size == 0
    with open(out, "a" if append else "w") as sink:
        if fresh:
            sink.write(stamp.jsonl_line() + "\n")
        while pending or running:
            while pending and len(running) < jobs:
                model_type = pending.pop(0)
                fd, path = tempfile.mkstemp(suffix=".json")
                os.close(fd)
                pid = os.fork()
                if pid == 0:
                    try:
                        _child(model_type, path, testers)
                    finally:
                        os._exit(0)
                running[pid] = (model_type, path, time.monotonic())
            time.sleep(0.05)
            for pid, (model_type, path, started) in list(running.items()):
                done, _status = os.waitpid(pid, os.WNOHANG)
                elapsed = time.monotonic() - started
                if not done and elapsed < timeout:
                    continue
                if not done:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                try:
                    with open(path) as handle:
                        saved = json.load(handle)  # partial when the process was killed
                except (OSError, ValueError):
                    saved = []
                records = saved if isinstance(saved, list) else [saved]
                if not records:
                    records = [{"arch": model_type,
                                "status": "timeout" if not done else "crashed"}]
                for record in records:
                    if not done and record.get("status") not in ("ran", "no-build",
                                                                 "no-baseline", "no-tester"):
                        record["status"] = "timeout"
                    for entry in record.get("conditions", {}).values():  # runs never reached
                        entry.setdefault("gcshim", {"status": "timeout"})
                        entry.setdefault("transformers", {"status": "timeout"})
                    record["seconds"] = round(elapsed, 1)
                    sink.write(json.dumps(record) + "\n")
                for leftover in (path, path + ".tmp"):
                    if os.path.exists(leftover):
                        os.unlink(leftover)
                sink.flush()
                del running[pid]
                statuses = ",".join(sorted({str(r.get("status")) for r in records}))
                print(f"{model_type:32s} {statuses:12s} {elapsed:6.1f}s", flush=True)


def all_model_types() -> List[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return sorted(CONFIG_MAPPING_NAMES)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", help="comma-separated model types")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--append", action="store_true",
                        help="add to --out (a rerun's record replaces the earlier one)")
    parser.add_argument("--testers", type=Path,
                        help="a transformers checkout (tests/ and utils/) at the installed "
                             "release's tag: build models with its ModelTesters instead "
                             "(--only then names model directories)")
    args = parser.parse_args(argv)
    testers = args.testers.resolve() if args.testers else None
    if args.only:
        model_types = args.only.split(",")
    elif testers is not None:
        model_types = tester_models.model_dirs(testers)
    else:
        model_types = all_model_types()
    sweep(model_types, args.out.resolve(), args.timeout, args.jobs, args.append, testers)


if __name__ == "__main__":
    main()

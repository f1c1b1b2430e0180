"""Write docs/coverage.md from the sweep results in docs/sweep/*.jsonl (never by hand).

    python -m tools.coverage_report [--sweeps docs/sweep] [--out docs/coverage.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional

from packaging.version import Version

from tools import stamp

CONDITIONS = ("non-reentrant/cache-off", "reentrant/cache-off", "non-reentrant/cache-default",
              "reentrant/cache-default")
# a run with nothing to compare with: the model's own steps differ or fail (not gcshim's doing)
NO_REFERENCE = ("unstable-baseline", "no-second-step")
SHORT = {"non-reentrant/cache-off": "NR-off", "reentrant/cache-off": "R-off",
         "non-reentrant/cache-default": "NR-on", "reentrant/cache-default": "R-on"}


SOURCES = {"transformers": "tiny models from default configs (tools/tiny_models.py)",
           "testers": "transformers' own ModelTesters (tools/tester_models.py)"}


def load(directory: Path, source: str = "transformers") -> Dict[str, Dict[str, Dict[str, Any]]]:
    """version -> arch -> record (the last record of an arch wins: reruns replace), for the
    sweep files of one source: transformers-<version>.jsonl or testers-<version>.jsonl."""
    results: Dict[str, Dict[str, Dict[str, Any]]] = defaultdict(dict)
    for path in sorted(directory.glob(f"{source}-*.jsonl")):
        version = path.stem.split("-", 1)[1]
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "arch" not in record:  # the stamp line (tools/stamp.py)
                continue
            for entry in record.get("conditions", {}).values():  # older records: a step's
                for run in entry.values():                     # time limit read as an error
                    if isinstance(run, dict) and str(run.get("error", "")).startswith(
                            "StepTimeout"):
                        run["status"] = "timeout"
            if _absent(record):  # a rerun list named a type this release does not have
                continue
            results[version][record["arch"]] = record
    return dict(sorted(results.items(), key=lambda item: Version(item[0])))


def _absent(record: Dict[str, Any]) -> bool:
    error = record.get("error", "")
    return record.get("status") == "absent" or (
        record.get("status") == "no-build" and error.startswith("KeyError")
        and record["arch"] in error)


def verdict(record: Dict[str, Any], who: str) -> str:
    """'pass' when every condition passed; else the failing conditions and the first cause."""
    if record.get("status") != "ran":
        return record.get("status", "?")
    statuses = {c: record["conditions"][c][who] for c in CONDITIONS if c in record["conditions"]}
    if all(s["status"] == "unsupported" for s in statuses.values()):
        return "unsupported"
    bad = {c: s for c, s in statuses.items() if s["status"] not in ("pass", "cache-kept")
           and s["status"] not in NO_REFERENCE}
    if not bad:
        kept = any(s["status"] == "cache-kept" for s in statuses.values())
        return "pass, cache kept" if kept else "pass"
    first = next(iter(bad.values()))
    cause = first.get("error") or first.get("mismatch") or first["status"]
    where = "/".join(SHORT[c] for c in bad)
    return f"fail {where}: {first['status']} ({cause[:90]})"


def peak_ratio(record: Dict[str, Any]) -> str:
    entry = record.get("conditions", {}).get("non-reentrant/cache-off", {}).get("gcshim", {})
    ratio = entry.get("peak_ratio")
    return f"{ratio:.2f}" if ratio is not None else ""


def summarise(records: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    counts: Dict[str, Any] = defaultdict(int)
    failures: List[str] = []
    for arch, record in sorted(records.items()):
        status = record.get("status")
        counts["model types"] += 1
        if status != "ran":
            counts[status] += 1
            continue
        counts["ran"] += 1
        ours, theirs = verdict(record, "gcshim"), verdict(record, "transformers")
        if ours.startswith("pass"):
            counts["gcshim pass"] += 1
            if ours != "pass":
                counts["gcshim pass, cache-carrying calls left un-checkpointed"] += 1
            if theirs != "pass":
                counts["gcshim pass where transformers' own fails or is unsupported"] += 1
        else:
            failures.append(f"`{arch}`: {ours}{_same_as_transformers(record)}")
            if theirs == "pass":
                counts["transformers passes, gcshim does not"] += 1
        if theirs == "pass":
            counts["transformers' own pass"] += 1
        elif theirs == "unsupported":
            counts["transformers' own unsupported"] += 1
        else:
            counts["transformers' own fails"] += 1
        for condition in record["conditions"].values():
            if condition["gcshim"].get("in_gcshim"):
                counts["runs that crashed inside gcshim"] += 1
    return {"counts": counts, "failures": failures}


def silent_wrong_gradients(results: Dict[str, Dict[str, Dict[str, Any]]]) -> List[str]:
    """Every run where gcshim trained on with gradients other than the plain step's."""
    found = []
    for version, records in results.items():
        for arch, record in sorted(records.items()):
            bad = [SHORT[c] for c in CONDITIONS
                   if record.get("conditions", {}).get(c, {}).get("gcshim", {}).get("status")
                   == "wrong-grads"]
            if bad:
                entry = record["conditions"][next(c for c in CONDITIONS if SHORT[c] == bad[0])]
                found.append(f"{version} `{arch}` {'/'.join(bad)}: "
                             f"{entry['gcshim'].get('mismatch')}{_same_as_transformers(record)}")
    return found


def per_condition(results: Dict[str, Dict[str, Dict[str, Any]]]) -> List[str]:
    """A table per release: for each condition, how gcshim's and transformers' runs ended."""
    lines = ["| release | condition | ran | gcshim pass | wrong grads | error | not recomputed "
             "| transformers' own pass | transformers passes, gcshim not |",
             "|---|---|---|---|---|---|---|---|---|"]
    for version, records in results.items():
        for condition in CONDITIONS:
            counts: Dict[str, int] = defaultdict(int)
            for record in records.values():
                entry = record.get("conditions", {}).get(condition)
                if record.get("status") != "ran" or entry is None:
                    continue
                counts["ran"] += 1
                ours = entry["gcshim"].get("status")
                theirs = entry.get("transformers", {}).get("status")
                counts[ours] += 1
                if ours == "cache-kept":
                    counts["pass"] += 1
                if theirs == "pass":
                    counts["theirs"] += 1
                    if ours not in ("pass", "cache-kept") and ours not in NO_REFERENCE:
                        counts["they only"] += 1
            lines.append(f"| {version} | {SHORT[condition]} | {counts['ran']} | "
                         f"{counts['pass']} | {counts['wrong-grads']} | {counts['error']} | "
                         f"{counts['no-recompute']} | {counts['theirs']} | "
                         f"{counts['they only']} |")
    return lines


def render(results: Dict[str, Dict[str, Dict[str, Any]]],
           testers: Optional[Dict[str, Dict[str, Dict[str, Any]]]] = None) -> str:
    testers = testers or {}
    torch_versions = sorted({r.get("torch", "?") for v in results.values() for r in v.values()
                             if r.get("torch")})
    lines = [
        "# Architecture coverage",
        stamp.markdown_line(),
        "",
        "Generated by `tools/coverage_report.py` from the sweep results in `docs/sweep/` "
        "(written by `tools/arch_sweep.py`; see `tools/sweep_versions.sh`). Do not edit by hand.",
        "",
        f"- generated: {datetime.date.today().isoformat()} on {platform.machine()} "
        f"({platform.system()}), CPU only, torch {', '.join(torch_versions)}",
        "- each architecture: a tiny random model from its default config, one training step "
        "without checkpointing, with transformers' own checkpointing (where the model claims "
        "support) and with `gcshim.apply(model)`, in four conditions: non-reentrant (NR) and "
        "reentrant (R), each with `config.use_cache=False` at the top level (`-off`) and with "
        "the config's default (`-on`).",
        "- pass, cache kept = the model reads, in its training forward, a cache its layers fill "
        "(PI0, Dory): calls that carry it run un-checkpointed, so gradients stay right.",
        "- pass = gradients equal to the un-checkpointed step (max error <= 1e-5 + 1e-3 x scale) "
        "and modules recomputed in backward; the peak column is gcshim's peak over the "
        "un-checkpointed peak (NR-off, live-tensor tracker).",
        "- `sub-model`: a config type without a model class of its own (covered by its parent); "
        "`no-build`/`no-baseline`: the sweep's tiny-model builder could not make the model or "
        "its un-checkpointed step run (excluded from the percentages; reasons below).",
        "- a float32 gradient mismatch is run again in float64 (plain and checkpointed): where "
        "it disappears there, it was rounding on a gradient that is zero in exact arithmetic "
        "(a conv bias before a GroupNorm), and the run counts as a pass (`float32_rounding` in "
        "the records).",
        "- gcshim is judged on a model's second training step (its first checks each layer, "
        "non-reentrant); `no-second-step`: the model's own second step fails without "
        "checkpointing too, so there is no reference.",
        "- a second source builds each model class the way transformers' own test suite does "
        "(its `ModelTester`'s config and inputs, from transformers' repository at the "
        "release's tag) and trains it with a loss that reaches every floating output through "
        "a fixed random weight; its results are the second part of this page.",
        "",
        "## Silent wrong gradients (failures)",
        "",
        "A run where gcshim trained on with gradients other than the un-checkpointed step's, "
        "from either source. This list must be empty.",
        "",
    ]
    silent = silent_wrong_gradients(results) + silent_wrong_gradients(
        {f"{version} (testers)": records for version, records in testers.items()})
    lines += [f"- {item}" for item in silent] or ["- none"]
    lines += ["", "## Per condition, tiny models", ""] + per_condition(results)
    if testers:
        lines += ["", "## Per condition, transformers' own testers", ""] + per_condition(testers)
    lines += [
        "",
        "## Summary per transformers release",
        "",
    ]
    summaries = {version: summarise(records) for version, records in results.items()}
    keys = ["model types", "sub-model", "no-build", "no-baseline", "timeout", "ran",
            "gcshim pass", "gcshim pass, cache-carrying calls left un-checkpointed",
            "transformers' own pass", "transformers' own fails",
            "transformers' own unsupported", "transformers passes, gcshim does not",
            "gcshim pass where transformers' own fails or is unsupported",
            "runs that crashed inside gcshim"]
    lines.append("| | " + " | ".join(results) + " |")
    lines.append("|---|" + "---|" * len(results))
    for key in keys:
        row = [str(summaries[v]["counts"].get(key, 0)) for v in results]
        lines.append(f"| {key} | " + " | ".join(row) + " |")
    rates = []
    for version in results:
        counts = summaries[version]["counts"]
        ran = counts.get("ran", 0)
        rates.append(f"{100 * counts.get('gcshim pass', 0) / ran:.1f}%" if ran else "-")
    lines.append("| gcshim pass rate (of ran) | " + " | ".join(rates) + " |")
    lines += ["", "## gcshim failures, with cause", "",
              "`timeout`: the architecture's process ran past the sweep's time limit (slow "
              "reference kernels of a tiny model on 2 CPU cores), before that run finished.", ""]
    for version in results:
        failures = summaries[version]["failures"]
        lines.append(f"- **{version}**: " + ("none" if not failures else ""))
        lines += [f"  - {failure}" for failure in failures]
    lines += ["", "## Per architecture", "",
              "gcshim / transformers' own, and gcshim's peak ratio, per release.", ""]
    lines.append("| architecture | " + " | ".join(results) + " |")
    lines.append("|---|" + "---|" * len(results))
    archs = sorted({arch for records in results.values() for arch in records})
    for arch in archs:
        cells = []
        for version in results:
            record = results[version].get(arch)
            if record is None:
                cells.append("")
            elif record.get("status") != "ran":
                cells.append(record.get("status", "?"))
            else:
                ours, theirs = verdict(record, "gcshim"), verdict(record, "transformers")
                cells.append(f"{_brief(ours)} / {_brief(theirs)} ({peak_ratio(record)})")
        if any(cell not in ("", "sub-model") for cell in cells):
            lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    lines += ["", "## Not built or no baseline step (builder limits, not gcshim)", ""]
    for version, records in results.items():
        lines.append(f"<details><summary>{version}</summary>")
        lines.append("")
        for arch, record in sorted(records.items()):
            if record.get("status") in ("no-build", "no-baseline", "timeout", "crashed"):
                lines.append(f"- `{arch}` {record['status']}: {record.get('error', '')[:160]}")
        lines += ["", "</details>", ""]
    if testers:
        lines += _tester_section(testers)
    return "\n".join(lines) + "\n"


def _tester_section(testers: Dict[str, Dict[str, Dict[str, Any]]]) -> List[str]:
    lines = ["## transformers' own testers: summary and failures", ""]
    summaries = {version: summarise(records) for version, records in testers.items()}
    keys = ["model types", "no-build", "no-baseline", "timeout", "ran", "gcshim pass",
            "transformers' own pass", "transformers passes, gcshim does not",
            "runs that crashed inside gcshim"]
    lines.append("| model classes | " + " | ".join(testers) + " |")
    lines.append("|---|" + "---|" * len(testers))
    for key in keys:
        label = "model classes" if key == "model types" else key
        row = [str(summaries[v]["counts"].get(key, 0)) for v in testers]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    lines.append("")
    for version in testers:
        failures = summaries[version]["failures"]
        lines.append(f"- **{version}**: " + ("none" if not failures else ""))
        lines += [f"  - {failure}" for failure in failures]
    return lines + [""]


def _same_as_transformers(record: Dict[str, Any]) -> str:
    """A note when transformers' own checkpointing fails the same way in the same conditions
    (the cause is then the model's recompute, not gcshim)."""
    same = [c for c, entry in record["conditions"].items()
            if entry["gcshim"]["status"] in ("wrong-grads", "error")
            and entry["transformers"].get("status") == entry["gcshim"]["status"]
            and entry["transformers"].get("mismatch") == entry["gcshim"].get("mismatch")
            and entry["transformers"].get("error") == entry["gcshim"].get("error")]
    return " - identical with transformers' own checkpointing" if same else ""


def _brief(text: str) -> str:
    return "fail" if text.startswith("fail") else text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=Path, default=Path("docs/sweep"))
    parser.add_argument("--out", type=Path, default=Path("docs/coverage.md"))
    args = parser.parse_args()
    args.out.write_text(render(load(args.sweeps), load(args.sweeps, "testers")))


if __name__ == "__main__":
    main()

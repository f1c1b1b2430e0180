"""One cell of the compatibility matrix: run the suite, keep a JSON summary of what happened.

    python -m tools.compat_cell run --junit J.xml --out docs/compat/CELL.json [-- pytest args]

Runs inside the cell's venv, so the versions it records are the ones the tests imported.
The summary holds counts, and one line of reason per failure and per skip reason; the full junit
report stays in the venv's tmp folder. tools/compat_report.py turns the summaries into
compat_matrix.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from importlib import metadata
from pathlib import Path

from tools import stamp

PACKAGES = ("torch", "transformers", "numpy", "accelerate", "peft", "lightning", "wrapt")


def one_line(text: str | None, limit: int = 200) -> str:
    """The line of a message that says what went wrong, shortened to fit a table cell."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    if not lines:
        return "(no message)"
    # pytest puts "E   ErrorType: message" lines after the source; prefer the first of those
    errors = [ln[1:].strip() for ln in lines if ln.startswith("E ")]
    line = errors[0] if errors else lines[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - the summary must be written whatever torch does
        gpu = "no GPU (torch did not import)"
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, {gpu}"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    try:
        import torch  # the build tag (+cpu, +cu121) is only in torch's own version

        found["torch"] = torch.__version__
    except Exception:  # noqa: BLE001
        pass
    return found


def summarise(junit: Path) -> dict:
    """Counts, failures and grouped skip reasons from a pytest junit report."""
    counts: Counter[str] = Counter()
    problems: list[dict[str, str]] = []
    skips: dict[str, list[str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                message = child.get("message") or child.text
                problems.append({"test": test, "outcome": outcome, "reason": one_line(message)})
                break
            if child.tag == "skipped":
                outcome = "skipped"
                reason = one_line(child.get("message") or child.text)
                skips.setdefault(reason.removeprefix("Skipped: "), []).append(test)
                break
        counts[outcome] += 1
    return {
        "counts": {k: counts[k] for k in ("passed", "failed", "error", "skipped")},
        "problems": problems,
        "skips": [{"reason": r, "count": len(t), "tests": t} for r, t in sorted(skips.items())],
    }


def run(junit: Path, out: Path, pytest_args: list[str]) -> int:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"--junitxml={junit}", *pytest_args])
    seconds = time.monotonic() - started
    if junit.exists():
        summary = summarise(junit)
    else:  # pytest died before writing a report: the cell is red with that reason
        summary = {"counts": {"passed": 0, "failed": 0, "error": 1, "skipped": 0},
                   "problems": [{"test": "(session)", "outcome": "error",
                                 "reason": f"pytest exited {proc.returncode} without a report"}],
                   "skips": []}
    record = {
        "cell": out.stem,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(),
        "test_seconds": round(seconds, 1),
        "pytest_exit": proc.returncode,
        **summary,
        **stamp.current(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{out}: {record['counts']} in {seconds:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run pytest and write the cell's summary")
    run_p.add_argument("--junit", type=Path, required=True)
    run_p.add_argument("--out", type=Path, required=True)
    run_p.add_argument("pytest_args", nargs="*")
    args = parser.parse_args(argv)
    return run(args.junit, args.out, args.pytest_args)


if __name__ == "__main__":
    sys.exit(main())

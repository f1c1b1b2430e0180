"""What every generated page records: the gcshim commit and the adapter table it was made with
(tests/test_generated_pages.py says when the table has changed since)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Dict, Optional

ROOT = Path(__file__).resolve().parents[1]
MD = re.compile(r"<!-- made by gcshim (\w+) with adapter table (\w+) -->")


def current() -> Dict[str, str]:
    from gcshim.adapters.registry import table_fingerprint

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"gcshim_commit": commit, "adapter_table": table_fingerprint()}


def markdown_line(stamp: Optional[Dict[str, str]] = None) -> str:
    stamp = stamp or current()
    return f"<!-- made by gcshim {stamp['gcshim_commit']} with adapter table " \
           f"{stamp['adapter_table']} -->"


def jsonl_line(stamp: Optional[Dict[str, str]] = None) -> str:
    """The first line of a sweep file (readers skip it: it has no "arch")."""
    return json.dumps({"stamp": stamp or current()})


def read(path: Path) -> Optional[Dict[str, str]]:
    """The stamp a generated page carries, or None."""
    text = path.read_text()
    if path.suffix == ".md":
        found = MD.search(text)
        return {"gcshim_commit": found[1], "adapter_table": found[2]} if found else None
    if path.suffix == ".jsonl":
        first = json.loads(text.splitlines()[0]) if text.strip() else {}
        return first.get("stamp")
    record = json.loads(text)
    if "adapter_table" in record:
        return {"gcshim_commit": record["gcshim_commit"], "adapter_table": record["adapter_table"]}
    return None

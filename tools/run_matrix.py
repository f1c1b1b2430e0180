"""Run the nox compatibility matrix, one cell after another, then write compat_matrix.md.

    python -m tools.run_matrix                 # every cell
    python -m tools.run_matrix torch2.0.1-tf4.44.2-py3.9 ...   # some cells again

Each cell's venv (a CUDA build of torch, ~3 GB) is made while the cell before it runs its tests,
and deleted when its own tests end, so at most two exist at once. pip's download cache is kept,
so a rerun downloads nothing. A cell whose venv cannot be built still gets a result, with the
reason. Logs go to .nox/matrix-logs/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
from tools.matrix_cells import MATRIX, RESULTS, cell_id  # noqa: E402

LOGS = ROOT / ".nox" / "matrix-logs"
PYENV = Path.home() / ".pyenv" / "versions"


def environment() -> dict[str, str]:
    """PATH with every pyenv interpreter, so nox finds python3.9 and python3.12 by name."""
    env = dict(os.environ)
    bins = [str(p / "bin") for p in sorted(PYENV.glob("3.*"))] if PYENV.is_dir() else []
    env["PATH"] = os.pathsep.join([*bins, env.get("PATH", "")])
    return env


def nox(cell: str, *extra: str, log: Path) -> subprocess.Popen:
    LOGS.mkdir(parents=True, exist_ok=True)
    handle = log.open("w")
    return subprocess.Popen([sys.executable, "-m", "nox", "-s", f"matrix({cell})", *extra],
                            cwd=ROOT, env=environment(), stdout=handle, stderr=subprocess.STDOUT)


def tail(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    useful = [ln for ln in lines if "error" in ln.lower()] or lines
    return useful[-1].strip()[:300] if useful else "(empty log)"


def record_outcome(cell: str, started: float, seconds: float, log: Path) -> None:
    """Add the cell's wall time to its result, or write a red result if it produced none."""
    path = ROOT / RESULTS / f"{cell}.json"
    if path.exists() and path.stat().st_mtime >= started:
        result = json.loads(path.read_text())
    else:
        python, torch, transformers = next(c for c in MATRIX if cell_id(*c) == cell)
        result = {"cell": cell, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "machine": "", "versions": {"python": python, "torch": torch,
                                              "transformers": transformers},
                  "counts": {"passed": 0, "failed": 0, "error": 1, "skipped": 0},
                  "problems": [{"test": "(venv)", "outcome": "error",
                                "reason": f"the cell did not run: {tail(log)}"}],
                  "skips": [], "requested_only": True}
    result["wall_seconds"] = round(seconds, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{cell}: {result['counts']} in {seconds / 60:.1f} min", flush=True)


def main(argv: list[str] | None = None) -> int:
    known = [cell_id(*c) for c in MATRIX]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cells", nargs="*", help=f"cells to run (default: all {len(known)})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.cells) - set(known))
    if unknown:
        parser.error(f"unknown cells {unknown}; known: {known}")
    cells = args.cells or known

    began = time.time()
    prefetch = nox(cells[0], "--install-only", log=LOGS / f"{cells[0]}.install.log")
    for i, cell in enumerate(cells):
        prefetch.wait()
        if i + 1 < len(cells):  # build the next venv while this cell's tests run
            nxt = cells[i + 1]
            prefetch = nox(nxt, "--install-only", log=LOGS / f"{nxt}.install.log")
        started = time.time()
        log = LOGS / f"{cell}.log"
        nox(cell, log=log).wait()
        record_outcome(cell, started, time.time() - started, log)
    prefetch.wait()

    if not args.cells:  # a full run: its length goes into the matrix's page
        run = {"cells": len(cells), "minutes": round((time.time() - began) / 60, 1),
               "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        (ROOT / RESULTS / "full-run.json").write_text(json.dumps(run, indent=1) + "\n")
    return subprocess.call([sys.executable, "-m", "nox", "-s", "compat"], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())

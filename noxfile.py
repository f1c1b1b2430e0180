"""nox sessions. `nox -s tests` is what CI runs (the pinned CPU torch).

The compatibility matrix: `python -m tools.run_matrix` runs every `matrix` cell (one venv at a
time, deleted after its run), then `nox -s compat` writes compat_matrix.md from the results.
"""

import os
import sys
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

# The CPU build of this torch lies on the local disk; any other torch is a multi-GB download.
TORCH = "torch==2.13.0"


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """The default test suite on the pinned torch."""
    session.install(TORCH)
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "--slow", *session.posargs)


@nox.session(python="3.11")
def torch_only(session: nox.Session) -> None:
    """The suite where transformers (and the other optional libraries) are not installed:
    gcshim needs only torch, wrapt and packaging; the tests that need more skip."""
    session.install(TORCH)
    session.install("--no-deps", "-e", ".")
    session.install("wrapt", "packaging", "pytest", "hypothesis", "numpy")
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session(python="3.11")
def stress(session: nox.Session) -> None:
    """The long reliability runs: many generated trees, 10,000 apply/remove cycles."""
    session.install(TORCH)
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-q", "--hypothesis-show-statistics",
                "tests/test_properties.py", "tests/test_concurrency.py", "tests/test_faults.py",
                "tests/test_other_patchers.py", *session.posargs,
                env={"HYPOTHESIS_PROFILE": "stress", "GCSHIM_STRESS_CYCLES": "10000"})


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "gcshim", "tests", "tools", "benchmarks", "docs", "noxfile.py")


# torchvision from the registry does not import beside the 2.13.0 CPU build: this pair does.
VISION = ("torch==2.14.1", "torchvision==0.29.1")


@nox.session(python="3.11")
def vision(session: nox.Session) -> None:
    """timm and torchvision blocks (a ~5.5 GB venv); timm without deps keeps torch pinned."""
    session.install(*VISION)
    session.install("--no-deps", "timm")
    session.install("huggingface_hub", "safetensors", "pyyaml", "pytest")
    session.install("--no-deps", "-e", ".")
    session.install("wrapt", "packaging")
    session.run("python", "-m", "pytest", "tests/test_other_families.py", *session.posargs)


@nox.session(python="3.11")
def sweep(session: nox.Session) -> None:
    """The architecture sweep on the given transformers releases, then docs/coverage.md.

    nox -s sweep -- 4.44.2 4.52.4 4.57.6 5.0.0 5.24.0
    """
    session.install(TORCH)
    session.install("-e", ".[test]")
    versions = session.posargs or ["4.44.2", "4.52.4", "4.57.6", "5.0.0", "5.24.0"]
    session.run("bash", "tools/sweep_versions.sh", *versions,
                env={"PYTHON": "python", "TF_ROOT": f"{session.virtualenv.location}/tf"},
                external=True)
    session.run("python", "-m", "tools.coverage_report")


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".[demo]")
    session.run("python", "-m", "gcshim", "demo", *session.posargs)


sys.path.insert(0, str(Path(__file__).parent))  # nox imports this file, not the package root
from tools.matrix_cells import MATRIX, RESULTS, cell_id  # noqa: E402


def _constraints(session: nox.Session, torch: str, transformers: str) -> str:
    """Pins that keep the test extras from pulling another torch or transformers."""
    lines = [f"torch=={torch}", f"transformers=={transformers}"]
    if tuple(int(p) for p in torch.split(".")[:2]) < (2, 4):
        lines.append("numpy<2")  # these torch builds were compiled against NumPy 1.x
    path = Path(session.create_tmp()) / "constraints.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@nox.session
@nox.parametrize("python,torch,transformers", MATRIX, ids=[cell_id(*c) for c in MATRIX])
def matrix(session: nox.Session, torch: str, transformers: str) -> None:
    """One cell: the whole suite on this torch and transformers; results into docs/compat/."""
    session.install("-c", _constraints(session, torch, transformers), f"torch=={torch}",
                    f"transformers=={transformers}", "-e", ".[test]",
                    "setuptools<81")  # older lightning releases import pkg_resources
    cell = cell_id(session.python, torch, transformers)
    junit = Path(session.create_tmp()) / "junit.xml"
    session.run("python", "-m", "tools.compat_cell", "run", "--junit", str(junit),
                "--out", str(RESULTS / f"{cell}.json"), "--", *session.posargs)
    if not os.environ.get("GCSHIM_KEEP_MATRIX_VENVS"):
        # a CUDA build of torch is ~3 GB; the matrix keeps one venv at a time
        session.run("rm", "-rf", session.virtualenv.location, external=True)


@nox.session(python=False)
def compat(session: nox.Session) -> None:
    """compat_matrix.md from the cells' results in docs/compat/ (never edited by hand)."""
    session.run("python", "-m", "tools.compat_report", str(RESULTS), "compat_matrix.md")

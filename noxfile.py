"""nox sessions. `nox -s tests` is what CI runs (the pinned CPU torch)."""

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
    session.run("python", "-m", "pytest", *session.posargs)


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
    session.run("python", "tools/coverage_report.py")


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".")
    session.run("python", "-m", "gcshim", "demo", *session.posargs)

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
    session.run("ruff", "check", "gcshim", "tests", "noxfile.py")


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".")
    session.run("python", "-m", "gcshim", "demo", *session.posargs)

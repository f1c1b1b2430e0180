"""Maintainers' tools (sweeps, the version matrix, generated pages), run from the repository
root as `python -m tools.<name>`; the tests import them as `tools.<name>`."""

"""Reading tools/arch_sweep.py records in tests, on whichever transformers is installed."""

import pytest

from tools import arch_sweep  # noqa: F401  (re-exported for the tests)


def require_ran(record: dict) -> dict:
    """The record of an architecture that ran; a skip, with why, when it could not run here.

    An architecture newer than the installed transformers, or whose tiny model that release
    cannot build, or which fails with no checkpointing at all (bugs of that release), has
    nothing to test.
    """
    import transformers

    where = f"transformers {transformers.__version__}"
    if record["status"] == "absent":
        pytest.skip(f"{where} has no {record['arch']}")
    if record["status"] == "no-build":
        pytest.skip(f"{where} cannot build a tiny {record['arch']}: {record['error']}")
    if record["status"] == "no-baseline":
        pytest.skip(f"{where}'s {record['arch']} fails with no checkpointing: {record['error']}")
    assert record["status"] == "ran", record
    unstable = [condition for condition, entry in record["conditions"].items()
                if "unstable-baseline" in (entry.get("gcshim", {}).get("status"),
                                           entry.get("transformers", {}).get("status"))]
    if unstable:
        pytest.skip(f"{where}: {record['arch']}'s plain training step is not repeatable on "
                    f"torch {record['torch']} ({', '.join(unstable)})")
    return record


def require_attribute(module, name: str):
    """module.name, or a skip naming the release that lacks it."""
    if not hasattr(module, name):
        pytest.skip(f"{module.__name__} {getattr(module, '__version__', '')} has no {name}")
    return getattr(module, name)

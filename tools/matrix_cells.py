"""The cells of the compatibility matrix: (Python, torch, transformers).

Data only (no nox import), shared by noxfile.py, tools/run_matrix.py, tools/compat_report.py
and the tests.
"""

from pathlib import Path

# Each listed torch with the newest of the listed transformers releases that runs on it, as
# found by running them: 4.57 asks for torch 2.1 but imports only from 2.2; 5.0 asks for 2.2 but
# its models call torch.is_autocast_enabled(device), new in 2.4; 5.24 needs 2.6 and Python 3.11.
TORCH_CELLS = [
    ("3.9", "2.0.1", "4.44.2"),
    ("3.11", "2.1.2", "4.52.4"),
    ("3.11", "2.2.2", "4.57.6"),
    ("3.11", "2.3.1", "4.57.6"),
    ("3.12", "2.4.1", "5.0.0"),
    ("3.11", "2.5.1", "5.0.0"),
    *(("3.11", torch, "5.24.0") for torch in (
        "2.6.0", "2.7.1", "2.8.0", "2.9.1", "2.10.0", "2.11.0", "2.12.1", "2.13.0", "2.14.1")),
]
TRANSFORMERS_CELLS = [("3.11", "2.13.0", tf) for tf in ("4.44.2", "4.52.4", "4.57.6", "5.0.0")]
MATRIX = TORCH_CELLS + TRANSFORMERS_CELLS
RESULTS = Path("docs/compat")  # one JSON summary per cell, relative to the repository


def cell_id(python: str, torch: str, transformers: str) -> str:
    return f"torch{torch}-tf{transformers}-py{python}"

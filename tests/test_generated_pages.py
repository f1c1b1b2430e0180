"""Generated pages record the gcshim commit and the adapter table they were made with; this
says which were made with a table other than today's (regenerate them: `nox -s sweep`,
`python -m tools.run_matrix` then `nox -s compat`)."""

import warnings
from pathlib import Path

import pytest

from gcshim.adapters.registry import table_fingerprint
from tools import stamp

ROOT = Path(__file__).parents[1]
PAGES = sorted([*ROOT.glob("docs/sweep/*.jsonl"), *ROOT.glob("docs/compat/*.json"),
                ROOT / "docs" / "coverage.md", ROOT / "compat_matrix.md"])


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_generated_page_says_what_made_it(page):
    found = stamp.read(page)
    assert found is not None, f"{page.relative_to(ROOT)} has no stamp (tools/stamp.py)"
    assert found["gcshim_commit"] and len(found["adapter_table"]) == 12
    if found["adapter_table"] != table_fingerprint():
        warnings.warn(f"{page.relative_to(ROOT)} was made by gcshim {found['gcshim_commit']} "
                      f"with adapter table {found['adapter_table']}; the table is "
                      f"{table_fingerprint()} now: regenerate it", UserWarning, stacklevel=1)


def test_the_fingerprint_follows_the_table(monkeypatch):
    from gcshim.adapters import Adapter, registry

    before = table_fingerprint()
    assert table_fingerprint() == before  # stable
    monkeypatch.setattr(registry, "_BUILTIN", [*registry._BUILTIN, Adapter(name="x",
                                                                        classes=("X",))])
    assert table_fingerprint() != before


def test_a_stamp_reads_back(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n" + stamp.markdown_line() + "\n")
    assert stamp.read(page) == stamp.current()
    sweep = tmp_path / "sweep.jsonl"
    sweep.write_text(stamp.jsonl_line() + "\n")
    assert stamp.read(sweep) == stamp.current()

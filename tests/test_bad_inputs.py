"""Each bad input of tests/bad_inputs.py gets its documented error, the model is left as it
was, and docs/errors.md lists exactly these rows with the messages they produce."""

import re
from pathlib import Path

import pytest

import gcshim
from tools.bad_inputs import CASES, Model

ROOT = Path(__file__).resolve().parent.parent
from tools import errors_doc  # noqa: E402


def _dicts(model):
    return {path: {k: id(v) for k, v in vars(m).items()} for path, m in model.named_modules()}


@pytest.mark.parametrize("case", CASES, ids=[c.input for c in CASES])
def test_bad_input_gets_its_error_and_touches_nothing(case):
    why = case.needs() if case.needs else None
    if why:
        pytest.skip(why)
    model = Model()
    model.blocks[1].__dict__.pop("forward", None)
    before = _dicts(model)
    with pytest.raises(case.error) as info:
        case.run(model)
    assert re.search(case.match, str(info.value)), str(info.value)
    if case.group != "state":
        model.blocks[1].__dict__.pop("forward", None)  # the rows that set one themselves
        model.train()  # the row that put it in eval mode
        assert _dicts(model) == before
        assert not gcshim.is_applied(model)
    gcshim.remove(model)


def test_errors_page_lists_every_row_with_its_message():
    import torch

    page, now = (ROOT / "docs" / "errors.md").read_text(), errors_doc.render()
    stale = "docs/errors.md is stale: run python -m tools.errors_doc"
    if f"torch {torch.__version__})" in page:
        assert page == now, stale
    else:  # written with another torch: the messages may differ, the rows may not
        assert errors_doc.rows(page) == errors_doc.rows(now), stale

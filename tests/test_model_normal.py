"""Behaviour 7: while applied, the model stays a normal model."""

import copy
import subprocess
import sys
import textwrap

import torch
from models import RopeLikeModel, assert_same_grads, grads_of

import gcshim


def _names(model):
    return (
        list(model.state_dict()),
        [name for name, _ in model.named_modules()],
        [name for name, _ in model.named_parameters()],
        [name for name, _ in model.named_buffers()],
    )


def test_names_and_state_dict_unchanged():
    model = RopeLikeModel()
    before = _names(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gcshim.apply(model, use_reentrant=True)
    assert _names(model) == before
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
    fresh = RopeLikeModel()
    fresh.load_state_dict(model.state_dict())  # strict: same keys both ways
    model.load_state_dict(RopeLikeModel().state_dict())


def test_deepcopy_of_an_applied_model_is_plain_unless_kept():
    model = RopeLikeModel().train()
    gcshim.apply(model)
    clone = copy.deepcopy(model)
    assert not gcshim.is_applied(clone)
    assert all(set(vars(a)) == set(vars(b)) - {"forward", "__getstate__"}
               for a, b in zip(clone.modules(), model.modules()))


def test_deepcopy_kept_applied_is_applied_and_independent():
    model = RopeLikeModel().train()
    ids = torch.randint(32, (3, 5))
    reference = RopeLikeModel()
    reference.load_state_dict(model.state_dict())
    reference(ids).backward()
    gcshim.apply(model)
    with gcshim.keep_on_copy():
        clone = copy.deepcopy(model)
    assert gcshim.is_applied(clone)
    for layer in clone.layers:
        # The copy's patch wraps the copy's own forward, not the original's.
        assert vars(layer)["forward"].__wrapped__.__self__ is layer
        assert vars(layer)["forward"].owner is clone
        layer.first_calls = 0
    clone(ids).backward()
    assert [layer.first_calls for layer in clone.layers] == [2, 2, 2]
    assert_same_grads(grads_of(reference), clone)
    assert all(p.grad is None for p in model.parameters())
    assert gcshim.apply(clone).layers == ["layers.0", "layers.1", "layers.2"]  # already applied
    gcshim.remove(clone)
    assert not gcshim.is_applied(clone) and gcshim.is_applied(model)


def test_torch_save_loads_where_gcshim_was_never_imported(tmp_path):
    model = torch.nn.Sequential(*[
        torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh()) for _ in range(3)
    ])
    gcshim.apply(model, use_reentrant=True)
    x = torch.randn(2, 8)
    expected = model(x)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    torch.save(x, tmp_path / "x.pt")
    torch.save(expected.detach(), tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        model = torch.load({str(path)!r}, weights_only=False)
        x = torch.load({str(tmp_path / "x.pt")!r})
        out = model.train()(x)
        out.sum().backward()
        assert torch.allclose(out, torch.load({str(tmp_path / "expected.pt")!r}))
        assert "gcshim" not in sys.modules, sorted(m for m in sys.modules if "gcshim" in m)
        print("ok")
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_saved_file_loads_with_gcshim_and_can_be_applied_again(tmp_path):
    model = RopeLikeModel()
    gcshim.apply(model)
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert not gcshim.is_applied(loaded)
    handle = gcshim.apply(loaded)
    assert len(handle.layers) == 3
    loaded(torch.randint(32, (2, 3))).backward()

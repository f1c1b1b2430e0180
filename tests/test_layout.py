"""The package layout shows the pipeline: each stage imports only stages below it, and
transformers-specific code lives only in its integration (adapter rows naming its classes as
data aside)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "gcshim"

# lowest first: a module may import its own stage and those below
STAGES = [
    ("gcshim._log", "gcshim._version", "gcshim.errors"),
    ("gcshim.adapters",),
    ("gcshim.core",),
    ("gcshim.budget",),
    ("gcshim.api",),
    ("gcshim.integrations",),
    ("gcshim.entry",),
    ("gcshim", "gcshim.auto", "gcshim.__main__"),
]

# where transformers may be named in code: its integration, and the adapter rows (data)
TRANSFORMERS_HOME = ("gcshim/integrations/transformers/", "gcshim/adapters/",
                     "gcshim/integrations/__init__.py")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield path, name, path.name == "__init__.py"


def _stage(module):
    best = None
    for level, prefixes in enumerate(STAGES):
        for prefix in prefixes:
            if module == prefix or (prefix != "gcshim" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (level, len(prefix))
    if best is None and module == "gcshim":
        return len(STAGES) - 1
    assert best is not None, f"{module} is in no stage"
    return best[0]


def _imports(path, name, is_package):
    """The gcshim modules a file imports (relative imports resolved), lazy ones included."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("gcshim"):
                for alias in node.names:  # "from . import core" imports gcshim.core
                    full = f"{target}.{alias.name}"
                    yield full if (PACKAGE.parent / (full.replace(".", "/") + ".py")).exists() \
                        or (PACKAGE.parent / full.replace(".", "/")).is_dir() else target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("gcshim"):
                    yield alias.name


def test_no_module_imports_a_stage_above_its_own():
    wrong = []
    for path, name, is_package in _modules():
        for target in _imports(path, name, is_package):
            if name == "gcshim.integrations" and target.startswith("gcshim.integrations."):
                continue
            if _stage(target) > _stage(name):
                wrong.append(f"{name} -> {target}")
    assert not wrong, wrong


def _names_in_code(path):
    """Identifiers, attributes and imports in a file's code (strings and comments aside)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, ast.arg):
            yield node.arg
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            yield node.name
        elif isinstance(node, ast.alias):
            yield node.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_transformers_is_named_only_in_its_integration_and_the_rows():
    wrong = {}
    for path, _name, _is_package in _modules():
        where = str(path.relative_to(PACKAGE.parent))
        if where.startswith(TRANSFORMERS_HOME):
            continue
        names = sorted({n for n in _names_in_code(path) if "transformers" in n.lower()})
        if names:
            wrong[where] = names
    assert not wrong, wrong


@pytest.mark.parametrize("stage", ["gcshim.core", "gcshim.adapters", "gcshim.budget"])
def test_lower_stages_import_no_way_in(stage):
    for path, name, is_package in _modules():
        if name.startswith(stage):
            assert not any(t.startswith(("gcshim.entry", "gcshim.integrations", "gcshim.api"))
                           for t in _imports(path, name, is_package)), name

"""The backend's folders show its architecture: each role imports only the roles below it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: role -> roles of ours it may import (besides itself)
ALLOWED = {"arch": set(), "live": {"arch"}, "train": {"arch", "live"}, "present": {"arch", "live", "train"}}
ROLES = set(ALLOWED)


def _imports(path: Path) -> list[str]:
    """Absolute module names a file imports (relative imports resolved against its package)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out += [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
    return out


def _role(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "backend" and parts[1] in ROLES else None


def test_roles_import_only_downward():
    bad = []
    for role, allowed in ALLOWED.items():
        for path in sorted((ROOT / "backend" / role).glob("*.py")):
            for mod in _imports(path):
                other = _role(mod)
                if other is not None and other != role and other not in allowed:
                    bad.append(
                        f"{path.relative_to(ROOT)} imports {mod} ({role} may import {sorted(allowed) or 'nothing of ours'})"
                    )
    assert not bad, "\n".join(bad)


def test_backend_has_no_streamlit_and_views_import_backend_only():
    bad = []
    for path in sorted((ROOT / "backend").rglob("*.py")):
        bad += [f"{path.relative_to(ROOT)} imports {m}" for m in _imports(path) if m.split(".")[0] == "streamlit"]
    for path in sorted((ROOT / "views").glob("*.py")):
        bad += [
            f"{path.relative_to(ROOT)} imports {m}"
            for m in _imports(path)
            if m.split(".")[0] in ("bench", "tests", "torch", "transformers")
        ]
    assert not bad, "\n".join(bad)


def test_every_role_is_a_documented_package():
    for role in ROLES:
        init = ROOT / "backend" / role / "__init__.py"
        if role == "train" and not init.exists():
            continue  # added with the training package
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "import" in doc.lower(), (
            f"backend/{role}/__init__.py needs a docstring saying what it may import"
        )


def test_the_rule_catches_an_upward_import(tmp_path):
    """The checker itself: an arch module importing live is reported."""
    fake = ROOT / "backend" / "arch" / "_probe_upward.py"
    fake.write_text("from ..live import runtime\n")
    try:
        assert _role(_imports(fake)[0]) == "live"
    finally:
        fake.unlink()


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers of imports under ``if TYPE_CHECKING:`` (for annotations only: no import at run time)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            lines |= {n.lineno for child in node.body for n in ast.walk(child) if hasattr(n, "lineno")}
    return lines


def _graph(role: str) -> dict[str, set[str]]:
    """Module → the modules of the same role it imports (at the top or inside a function), by short name."""
    folder = ROOT / "backend" / role
    names = {p.stem for p in folder.glob("*.py")}
    graph = {}
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_lines(tree)
        deps = set()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in skip:
                continue
            for mod in _imports_of(node, path):
                parts = mod.split(".")
                if parts[:2] == ["backend", role] and len(parts) > 2 and parts[2] in names:
                    deps.add(parts[2])
        graph[path.stem] = deps - {path.stem}
    return graph


def _imports_of(node, path: Path) -> list[str]:
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = list(package[: len(package) - node.level + 1]) if node.level else []
    mod = ".".join(base + ([node.module] if node.module else []))
    return [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, each once (as the path from its smallest module round to it)."""
    found = set()

    def walk(start, node, path):
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                found.add(tuple(path))
            elif nxt not in path and nxt > start:
                walk(start, nxt, path + [nxt])

    for m in sorted(graph):
        walk(m, m, [m])
    return [list(c) + [c[0]] for c in sorted(found)]


def test_no_import_cycle_inside_a_role():
    bad = [f"backend/{role}: " + " -> ".join(c) for role in ROLES for c in _cycles(_graph(role))]
    assert not bad, "\n".join(bad)


def test_the_cycle_rule_catches_a_planted_cycle():
    a, b = ROOT / "backend" / "train" / "_probe_a.py", ROOT / "backend" / "train" / "_probe_b.py"
    a.write_text("def f():\n    from . import _probe_b\n")
    b.write_text("from ._probe_a import f\n")
    try:
        assert ["_probe_a", "_probe_b", "_probe_a"] in _cycles(_graph("train"))
    finally:
        a.unlink()
        b.unlink()

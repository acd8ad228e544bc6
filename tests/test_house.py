"""The house rules that code review alone does not keep: no import circle among the modules of the
core and the first-party plugins (module-level and function-level imports alike), and no module
above 500 lines except the network definitions."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_graph() -> dict[str, set[str]]:
    """Module name → the modules of ``zoo`` and ``plugins/`` it imports (``plugins/zoo_cm`` is
    imported as ``zoo_cm``); imports under ``if TYPE_CHECKING`` do not count."""
    files = {}
    for base, prefix in ((ROOT / "zoo", "zoo"), (ROOT / "plugins", "")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(([prefix] if prefix else []) + parts)
            files[name] = path
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        skipped = {id(node) for branch in ast.walk(tree) if isinstance(branch, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(branch.test)
                   for stmt in branch.body for node in ast.walk(stmt)}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_the_core_or_the_first_party_plugins():
    graph = module_graph()
    assert {"zoo.plugins", "zoo.methods", "zoo_cm.loss"} <= set(graph)
    assert "zoo.plugins" in graph["zoo.methods"]  # the graph sees imports
    assert circles(graph) == []


#: Network definitions may be long (a U-Net is one idea in many layers); nothing else may.
LONG_ALLOWED = ("zoo/nets/", "plugins/zoo_meanflow/net.py")
MAX_LINES = 500


def test_no_module_of_the_core_or_a_plugin_is_above_500_lines():
    """One idea per module, for the orchestration as for the math: a module that grows past
    MAX_LINES is split by what it does (as zoo/bench/ and zoo/cli/ are)."""
    long = {}
    for base in (ROOT / "zoo", ROOT / "plugins"):
        for path in base.rglob("*.py"):
            name = path.relative_to(ROOT).as_posix()
            lines = len(path.read_text().splitlines())
            if lines > MAX_LINES and not name.startswith(LONG_ALLOWED):
                long[name] = lines
    assert not long, f"modules above {MAX_LINES} lines: {long}"

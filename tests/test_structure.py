"""The package's shape: imports flow one way, down the layer table of docs/ARCHITECTURE.md (every module in
a row, no upward import, no cycles), and no module over the line budget."""
from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "toolchain"
ARCHITECTURE = PACKAGE.parent / "docs" / "ARCHITECTURE.md"
LINE_BUDGET = 450


def _module_name(path: Path) -> str:
    parts = ["edgekit", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST):
    """Import nodes, function-level ones included, but not those under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in _runtime_imports_of(child))
            continue
        yield from _runtime_imports_of(node)


def _runtime_imports_of(node: ast.AST):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    yield from _runtime_imports(node)


@functools.lru_cache(maxsize=None)
def import_graph() -> dict[str, set[str]]:
    """Module -> the edgekit modules it imports. The package root is a lazy facade (convert, bench,
    __version__), so edges to it are left out."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join([*base, *([node.module] if node.module else [])])
                candidates = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules] or [target]
            targets |= {c for c in candidates if c in modules and c not in (name, "edgekit")}
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles_among_edgekit_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_subpackage_is_in_the_built_wheel():
    """setup.cfg lists packages by hand: a new subpackage left out is missing from every install."""
    import configparser
    config = configparser.ConfigParser()
    config.read(PACKAGE.parent / "setup.cfg")
    listed = {p.strip() for p in config["options"]["packages"].replace("\n", ",").split(",") if p.strip()}
    found = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, f"add to setup.cfg [options] packages: {sorted(found - listed)}"


def layer_table(text: str) -> list[list[str]]:
    """The rows of the code block under `## Layers`, top first: each a list of names (`x/*` = package x and
    everything under it). A row whose names column ends in a comma continues on the next line."""
    block = text.split("## Layers", 1)[1].split("```", 2)[1]
    rows: list[list[str]] = []
    continued = False
    for line in block.strip("\n").splitlines():
        names = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        parts = [n.strip() for n in names.split(",") if n.strip()]
        if continued:
            rows[-1] += parts
        else:
            rows.append(parts)
        continued = names.rstrip().endswith(",")
    return rows


def layer_of(module: str, rows: list[list[str]]) -> int | None:
    """The row of a module: the most specific name that covers it."""
    best = None
    for i, row in enumerate(rows):
        for name in row:
            dotted = "edgekit" if name == "edgekit" else "edgekit." + name.removesuffix("/*").replace("/", ".")
            covers = module == dotted or (name.endswith("/*") and module.startswith(dotted + "."))
            if covers and (best is None or len(dotted) > best[1]):
                best = (i, len(dotted))
    return best[0] if best else None


def upward_imports(graph: dict[str, set[str]], rows: list[list[str]]) -> list[str]:
    return sorted(f"{a} (row {layer_of(a, rows) + 1}) imports {b} (row {layer_of(b, rows) + 1})"
                  for a, targets in graph.items() for b in targets if layer_of(b, rows) < layer_of(a, rows))


def test_every_module_is_in_the_layer_table():
    rows = layer_table(ARCHITECTURE.read_text())
    missing = sorted(m for m in import_graph() if layer_of(m, rows) is None)
    assert not missing, f"add to the layer table in docs/ARCHITECTURE.md: {missing}"


def test_imports_flow_down_the_layer_table():
    rows = layer_table(ARCHITECTURE.read_text())
    upward = upward_imports(import_graph(), rows)
    assert not upward, "imports against the layer table in docs/ARCHITECTURE.md:\n" + "\n".join(upward)


def test_the_layer_check_finds_an_upward_import():
    rows = layer_table("## Layers\n```\ncli/*, top   thin\nmid,\nalso     flows\nlow          types\n```\n")
    assert rows == [["cli/*", "top"], ["mid", "also"], ["low"]]
    assert layer_of("edgekit.cli.convert", rows) == 0 and layer_of("edgekit.also", rows) == 1
    assert layer_of("edgekit.lower", rows) is None
    graph = {"edgekit.low": {"edgekit.mid"}, "edgekit.mid": {"edgekit.low", "edgekit.also"}, "edgekit.cli": set()}
    assert upward_imports(graph, rows) == ["edgekit.low (row 3) imports edgekit.mid (row 2)"]



def test_no_module_is_over_the_line_budget():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    over = {name: n for name, n in sorted(sizes.items()) if n > LINE_BUDGET}
    assert not over, f"modules over {LINE_BUDGET} lines (split them by concept): {over}"

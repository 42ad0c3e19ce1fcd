"""The package's layers: each imports only from the layers below it, so a change low down is seen by
everything above and a change high up by nothing below."""

import ast
from pathlib import Path

import bigmodel

LAYERS = [  # lowest first; a package imports from itself and from the layers before its own, not from a neighbour
    {"errors", "disk"},
    {"config"},
    {"device", "flags"},
    {"data"},
    {"model"},
    {"infer"},
    {"evaluate"},
    {"tasks"},
    {"train"},
    {"federated", "serve"},
    {"recipes"},
    {"cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
ROOT = Path(bigmodel.__file__).parent


def imports_of(path: Path) -> list[str]:
    """Every `bigmodel.X` module a file imports, at the top or inside a function; `from bigmodel.data import
    labelled` imports the module `bigmodel.data.labelled`, not the package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and (node.module + ".").startswith("bigmodel."):
            package = ROOT.parent.joinpath(*node.module.split("."))
            modules = [f"{node.module}.{a.name}" for a in node.names
                       if (package / f"{a.name}.py").is_file() or (package / a.name / "__init__.py").is_file()]
            found += modules or [node.module]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("bigmodel.")]
    return found


def test_every_module_imports_only_from_its_layer_or_below():
    files = [p for p in ROOT.rglob("*.py") if p.name != "__init__.py" or p.parent != ROOT]
    unknown = sorted({p.relative_to(ROOT).with_suffix("").parts[0] for p in files} - set(RANK))
    assert not unknown, f"place these in LAYERS: {unknown}"
    upward = []
    for path in files:
        here = path.relative_to(ROOT).with_suffix("").parts[0]
        for module in imports_of(path):
            there = module.split(".")[1]
            if RANK[there] > RANK[here] or (RANK[there] == RANK[here] and there != here):
                upward.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not upward, "\n".join(upward)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_two_modules_import_each_other_even_lazily():
    """A cycle (even one kept apart by an import inside a function) means two modules are one idea split."""
    graph = {module_name(p): set() for p in ROOT.rglob("*.py")}
    for path in ROOT.rglob("*.py"):
        for module in imports_of(path):
            while module not in graph and "." in module:  # `from bigmodel.x import name` names a module x
                module = module.rsplit(".", 1)[0]
            if module != module_name(path) and module in graph:
                graph[module_name(path)].add(module)
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*trail[trail.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)

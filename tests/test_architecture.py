"""The package's shape: no import cycle, and no folder importing a folder above its own.

Read from the source with `ast` (every import, at the top of a module or inside a function), so a lazy
import inside a function counts as much as one at the top. The layers are the folders, lowest first (a module
imports its own folder and the ones below):
  engine/    the ground and the runtime: errors, files and the formats the engine writes, protocols, images,
             faces, backends, sampling; engine/models/ (adapters and the zoo)
  kernels/   the Triton kernels and their torch references
  guide/     the algorithm: GUIDE, the robust mode, verification;  export/  ONNX, TensorRT, Triton (siblings)
  bench/     the benchmarks
  apps/      the applications: the command line, the server
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"engine": 0, "kernels": 1, "guide": 2, "export": 2, "bench": 3, "apps": 4}
FOLDERS = tuple(LAYERS)


def layer(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def modules() -> dict[str, Path]:
    """'engine.models.zoo' => its file, for every module of the package."""
    out = {}
    for folder in FOLDERS:
        for f in (ROOT / folder).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name.removeprefix("guide_engine.") for a in node.names
                           if a.name.startswith("guide_engine.")]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                elif (node.module or "").startswith("guide_engine."):
                    mod = node.module.removeprefix("guide_engine.")
                else:
                    continue
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
            else:
                continue
            edges |= {t for t in map(known, targets) if t and t != name}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read_from_the_source():
    g = import_graph()
    assert {"engine.errors", "guide.job", "kernels.dispatch"} <= g.keys()
    assert "engine.errors" in g["guide.job"] and "engine.rundir" in g["guide.job"]  # relative imports resolved
    assert "kernels.triton_identity_distance" in g["kernels.identity_distance"]  # a lazy import counts
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_no_folder_imports_a_folder_above_its_own():
    upward = [f"{m} imports {t}" for m, targets in import_graph().items() for t in sorted(targets)
              if layer(t) > layer(m)]
    assert upward == []


def test_siblings_do_not_import_each_other():
    """guide/ and export/ share a layer: neither needs the other (export takes weights, not the algorithm)."""
    across = [f"{m} imports {t}" for m, targets in import_graph().items() for t in sorted(targets)
              if layer(t) == layer(m) and t.split(".")[0] != m.split(".")[0]]
    assert across == []


def test_every_folder_of_the_package_has_its_layer():
    """A new folder must say where it sits: pyproject's packages and the layers name the same folders."""
    import tomllib

    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    assert {d.split("/")[0] for d in dirs} == set(LAYERS)


def test_imports_inside_the_package_are_relative():
    """Editors and import-graph tools resolve `from ..engine import x` by path; `guide_engine.x` maps to `x/`
    only through pyproject's package-dir."""
    absolute = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in modules().values()
                for n in ast.walk(ast.parse(p.read_text()))
                if isinstance(n, ast.ImportFrom) and not n.level and (n.module or "").startswith("guide_engine")]
    assert absolute == []

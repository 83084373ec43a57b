"""Fail if any import cycle exists between rlfw's modules (run by ``nox -s lint``).

import-linter's layers contract keeps the layers one-way; this also catches a cycle inside one
package (a module importing another that imports it back, at load time or inside a function).
Besides the ``import`` statements grimp reads, two kinds of import by name count as edges:

- a call ``importlib.import_module("rlfw.x")``, ``import_module("rlfw.x")`` or
  ``__import__("rlfw.x")`` with a string literal naming an rlfw module: module -> ``rlfw.x``;
- the ``rlfw.components`` entry points of pyproject.toml, which
  :func:`rlfw.components.load_components` imports: ``rlfw.components`` -> each declared module.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import grimp

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
BY_NAME = {"import_module", "__import__"}  # importlib.import_module, builtins.__import__


def by_name_imports(source: str) -> set[str]:
    """The module names given as a string literal to ``import_module``/``__import__`` in
    ``source`` (a module's text), whatever object the function is reached through."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        arg = node.args[0]
        if name in BY_NAME and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            found.add(arg.value)
    return found


def entry_point_modules(pyproject: Path) -> set[str]:
    """The modules named by pyproject's ``[project.entry-points."rlfw.components"]`` table."""
    if not pyproject.is_file():
        return set()
    with pyproject.open("rb") as f:
        table = tomllib.load(f).get("project", {}).get("entry-points", {}).get("rlfw.components", {})
    return {str(v).split(":", 1)[0].strip() for v in table.values()}


def module_file(module: str, src: Path) -> Path | None:
    """The source file of ``module`` under ``src`` (a package's ``__init__.py``), or None."""
    base = src.joinpath(*module.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def edges(graph: grimp.ImportGraph, src: Path, pyproject: Path) -> dict[str, set[str]]:
    """module -> the rlfw modules it imports: grimp's edges plus the by-name ones above."""
    modules = set(graph.modules)
    out = {m: set(graph.find_modules_directly_imported_by(m)) & modules for m in modules}
    for m in modules:
        path = module_file(m, src)
        if path is not None:
            out[m] |= by_name_imports(path.read_text(encoding="utf-8")) & modules
    if "rlfw.components" in out:
        out["rlfw.components"] |= entry_point_modules(pyproject) & modules
    return out


def find_cycle(imports: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a module path ``[a, b, ..., a]``, or None (iterative DFS, three colours).

    Args:
        imports: module -> the modules it imports (keys are every module considered).
    """
    colour: dict[str, int] = dict.fromkeys(imports, 0)
    for root in sorted(imports):
        if colour[root]:
            continue
        stack: list[tuple[str, list[str]]] = [(root, sorted(imports[root]))]
        path = [root]
        colour[root] = 1
        while stack:
            node, children = stack[-1]
            if not children:
                colour[node] = 2
                stack.pop()
                path.pop()
                continue
            child = children.pop()
            if colour[child] == 1:
                return [*path[path.index(child) :], child]
            if colour[child] == 0:
                colour[child] = 1
                path.append(child)
                stack.append((child, sorted(imports[child])))
    return None


def main() -> int:
    graph = grimp.build_graph("rlfw")
    imports = edges(graph, ROOT / "src", ROOT / "pyproject.toml")
    cycle = find_cycle(imports)
    if cycle:
        print("import cycle: " + " -> ".join(cycle))
        return 1
    print(f"no import cycle among {len(imports)} rlfw modules (by-name imports and entry points counted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

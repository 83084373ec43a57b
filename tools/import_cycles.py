"""Fail if any import cycle exists between rlfw's modules (run by ``nox -s lint``).

import-linter's layers contract keeps the layers one-way; this also catches a cycle inside one
package (a module importing another that imports it back, at load time or inside a function).
"""

from __future__ import annotations

import sys

import grimp


def find_cycle(graph: grimp.ImportGraph, modules: set[str]) -> list[str] | None:
    """One cycle as a module path ``[a, b, ..., a]``, or None (iterative DFS, three colours)."""
    colour: dict[str, int] = dict.fromkeys(modules, 0)
    for root in sorted(modules):
        if colour[root]:
            continue
        stack: list[tuple[str, list[str]]] = [(root, sorted(graph.find_modules_directly_imported_by(root) & modules))]
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
                stack.append((child, sorted(graph.find_modules_directly_imported_by(child) & modules)))
    return None


def main() -> int:
    graph = grimp.build_graph("rlfw")
    cycle = find_cycle(graph, set(graph.modules))
    if cycle:
        print("import cycle: " + " -> ".join(cycle))
        return 1
    print(f"no import cycle among {len(graph.modules)} rlfw modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())

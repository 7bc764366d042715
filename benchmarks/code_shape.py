"""Largest functions under a source tree (lines from ``def`` to the end, nested definitions included).

    python benchmarks/code_shape.py src 15

Used to measure refactors (docs: the issue notes quote it before and after); `duplicates --repo src`
(the workplace's tool) gives the repeated blocks.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def largest_functions(root: Path) -> list[tuple[int, str]]:
    rows = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                rows.append((size, f"{path.relative_to(root)}:{node.lineno} {node.name}"))
    return sorted(rows, reverse=True)


def main(argv: list[str]) -> None:
    root = Path(argv[0] if argv else "src")
    most = int(argv[1]) if len(argv) > 1 else 15
    for size, where in largest_functions(root)[:most]:
        print(f"{size:5d}  {where}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Fail when a class in coalmine/ is over 300 lines or a function over 60.

The report's HTML and SVG rendering (coalmine/tools/report.py) is exempt: its functions
draw one panel each and read best whole. Run from the repository root:
``python scripts/check_sizes.py``; prints every offender and exits 1 if there is one.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_CLASS = 300
MAX_FUNCTION = 60
EXEMPT = {Path("coalmine/tools/report.py")}


def offenders(root: Path) -> list[str]:
    """Every class and function under ``root`` longer than its limit, as ``path:line`` text."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if path in EXEMPT:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                limit, kind = MAX_CLASS, "class"
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                limit, kind = MAX_FUNCTION, "function"
            else:
                continue
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > limit:
                found.append(f"{path}:{node.lineno}: {kind} {node.name}: {lines} lines > {limit}")
    return found


def main() -> int:
    """Print the offenders; 1 if there are any."""
    found = offenders(Path("coalmine"))
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

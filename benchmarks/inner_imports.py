"""Count the imports made inside functions, and how many of them are of edgehook's own modules.

The rule (../shared/STYLE.md, issue 22): project imports sit at module top unless the module
is heavy (torch, wandb, onnx, ...) and the caller may not need it, and an import left inside
a function says why in a comment. This prints the measure: the totals, then each project
import inside a function with whether a comment near it gives a reason.

    .venv/bin/python benchmarks/inner_imports.py            # totals and the project list
    .venv/bin/python benchmarks/inner_imports.py --all      # every import inside a function
    .venv/bin/python benchmarks/inner_imports.py --json     # the same, for a script
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The five root packages of [tool.importlinter] (the console was missing before 2026-12-03).
PARTS = ("edgehook", "core", "receiver", "pipeline", "console")
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


@dataclass(frozen=True)
class InnerImport:
    path: str
    line: int
    function: str
    modules: tuple[str, ...]
    project: bool  # imports one of edgehook's own parts
    commented: bool  # a comment on the line, or just above its group of imports


def imported(node: ast.Import | ast.ImportFrom) -> tuple[str, ...]:
    if isinstance(node, ast.Import):
        return tuple(alias.name for alias in node.names)
    base = "." * node.level + (node.module or "")
    return (base,)


def is_project(modules: tuple[str, ...]) -> bool:
    return any(m.startswith(".") or m.split(".")[0] in PARTS for m in modules)


def has_reason(lines: list[str], lineno: int) -> bool:
    """A comment on the import's line, or just above the group of imports it belongs to."""
    if "#" in lines[lineno - 1]:
        return True
    above = lineno - 2
    while above >= 0 and lines[above].strip().startswith(("import ", "from ", ")")):
        above -= 1
    return above >= 0 and lines[above].strip().startswith("#")


def inner_imports(path: Path) -> Iterator[InnerImport]:
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source, str(path))

    def walk(node: ast.AST, function: str | None) -> Iterator[InnerImport]:
        for child in ast.iter_child_nodes(node):
            name = function
            if isinstance(child, FUNCTIONS):
                name = getattr(child, "name", "<lambda>")
            if isinstance(child, ast.Import | ast.ImportFrom) and function is not None:
                modules = imported(child)
                yield InnerImport(
                    str(path.relative_to(ROOT)),
                    child.lineno,
                    function,
                    modules,
                    is_project(modules),
                    has_reason(lines, child.lineno),
                )
            yield from walk(child, name)

    yield from walk(tree, None)


def measure(parts: tuple[str, ...] = PARTS) -> list[InnerImport]:
    found: list[InnerImport] = []
    for part in parts:
        for path in sorted((ROOT / part).rglob("*.py")):
            found.extend(inner_imports(path))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="list every import, not only ours")
    parser.add_argument("--json", action="store_true", help="one JSON document")
    args = parser.parse_args(argv)
    found = measure()
    project = [i for i in found if i.project]
    totals = {
        "inside_functions": len(found),
        "of_project_modules": len(project),
        "project_with_a_comment": sum(i.commented for i in project),
        "files": len({i.path for i in found}),
    }
    by_part = {part: sum(i.path.split("/")[0] == part for i in project) for part in PARTS}
    listed = found if args.all else project
    if args.json:
        listing = [asdict(i) for i in listed]
        print(json.dumps({"totals": totals, "by_part": by_part, "imports": listing}, indent=1))
        return 0
    print(
        f"imports inside functions: {totals['inside_functions']} in {totals['files']} files; "
        f"of edgehook's own modules: {totals['of_project_modules']} "
        f"({totals['project_with_a_comment']} with a comment beside them)"
    )
    print("of edgehook's own, by part: " + ", ".join(f"{k} {v}" for k, v in by_part.items()))
    for i in listed:
        mark = "  " if i.commented else "! "  # ! no comment says why
        print(f"{mark}{i.path}:{i.line} in {i.function}(): {', '.join(i.modules)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

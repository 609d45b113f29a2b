"""The shape of the code: modules, lines, the longest functions and the imports between modules.

    python scripts/house.py [--json]

Issue 26 measures the house before and after with it: how big ``cli/`` is, which functions run
over 100 lines, and whether any modules import each other (a circle) — at run time or only for
type checking, said apart.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dn_cli"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.Module, name: str, is_package: bool) -> tuple[set[str], set[str]]:
    """(project modules imported at run time, those imported only under ``TYPE_CHECKING``)."""
    runtime, typing_only = set(), set()
    guarded = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        found = {t for t in targets if t.startswith("dn_cli")}
        (typing_only if id(node) in guarded else runtime).update(found)
    return runtime, typing_only


def measure() -> dict:
    modules = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    arrows: dict[str, set[str]] = {}
    typing_arrows: dict[str, set[str]] = {}
    functions = []
    lines = {}
    for name, path in modules.items():
        text = path.read_text()
        tree = ast.parse(text)
        lines[name] = len(text.splitlines())
        runtime, typing_only = imports(tree, name, path.name == "__init__.py")
        arrows[name], typing_arrows[name] = (
            {t for t in targets if t in modules and t != name} for targets in (runtime, typing_only)
        )
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{name}.{node.name}"))
    circles = sorted(
        f"{a} ⇄ {b}"
        for a in modules
        for b in arrows[a] | typing_arrows[a]
        if a < b and a in arrows[b] | typing_arrows[b]
    )
    cli = [n for n in modules if n.startswith("dn_cli.cli")]
    functions.sort(reverse=True)
    return {
        "modules": len(modules),
        "lines": sum(lines.values()),
        "cli_modules": len(cli),
        "cli_lines": sum(lines[n] for n in cli),
        "largest_modules": sorted(((v, k) for k, v in lines.items()), reverse=True)[:5],
        "longest_functions": functions[:5],
        "functions_over_100_lines": sum(n > 100 for n, _ in functions),
        "import_arrows": sum(len(v) for v in arrows.values()),
        "type_only_arrows": sum(len(v) for v in typing_arrows.values()),
        "circles": circles,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    figures = measure()
    if parser.parse_args().json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()

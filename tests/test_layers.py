"""The layers, as the imports say: the domain imports only the standard library (and
itself), and the proxy package never imports the hub's web handlers."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

HUB = Path(__file__).resolve().parent.parent / "hub"


def imported(path: Path) -> set[str]:
    """Every module that ``path`` imports, at any depth of its code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_the_proxy_package_never_imports_the_hubs_web_handlers() -> None:
    found = {
        f"{path.name}: {name}"
        for path in sorted((HUB / "proxy").glob("*.py"))
        for name in imported(path)
        if name == "hub.web" or name.startswith("hub.web.")
    }
    assert not found


def test_the_domain_imports_only_the_standard_library_and_itself() -> None:
    allowed = sys.stdlib_module_names | {"__future__"}
    found = {
        f"{path.name}: {name}"
        for path in sorted((HUB / "domain").glob("*.py"))
        for name in imported(path)
        if name.split(".")[0] not in allowed and not name.startswith("hub.domain")
    }
    assert not found

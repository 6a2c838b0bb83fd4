"""The layout follows the data flow: each package imports only the leaves and the packages
below it (daemon/__init__.py), and gsm/ never imports daemon/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Modules every package may import.
LEAVES = {"model", "errors", "clock", "config", "logsetup"}
#: What each package may import besides the leaves and itself.
ALLOWED: dict[str, set[str]] = {
    "intake": set(),
    "decide": {"gsm"},
    "sinks": set(),
    "store": {"decide", "sinks"},  # sinks: the events, the bus, the counter names
    "sending": {"store", "sinks", "gsm"},
    "outbox": {"decide", "sending", "store", "sinks"},
    "replies": {"decide", "outbox", "store", "sinks", "gsm"},
    "forwarding": {"decide", "store", "sinks"},
    "contacts": {"decide"},  # caller numbers in E.164; the Asterisk database is handed in
    "metrics": {"sinks", "store", "replies"},  # counter names, stored counts, reply kinds
    "mqtt": {"sinks", "store"},  # the events; the state it shows and the pause it writes
    # several offices: the wire helpers of mqtt, judged numbers and caps, the outbox it
    # feeds on a sender, the Sender interface on a site
    "jobs": {"decide", "mqtt", "outbox", "sending", "sinks", "store"},
    "app": {
        "intake",
        "replies",
        "forwarding",
        "contacts",
        "metrics",
        "mqtt",
        "jobs",
        "decide",
        "store",
        "outbox",
        "sending",
        "sinks",
        "check",
        "sdnotify",
        "gsm",
    },
}


def _imports(path: Path) -> set[str]:
    """The daemon packages (or "gsm") a module imports."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "daemon" and len(parts) > 1:
                out.add(parts[1])
            elif parts[0] == "gsm":
                out.add("gsm")
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_what_it_may(package: str) -> None:
    allowed = LEAVES | ALLOWED[package] | {package}
    wrong = {
        f"{path.relative_to(ROOT)} imports {sorted(_imports(path) - allowed)}"
        for path in (ROOT / "daemon" / package).rglob("*.py")
        if _imports(path) - allowed
    }
    assert not wrong


def test_the_leaves_import_only_leaves() -> None:
    for leaf in LEAVES - {"config"}:
        assert _imports(ROOT / "daemon" / f"{leaf}.py") <= LEAVES, leaf
    # the config may name the daemon's root error, nothing else
    assert _imports(ROOT / "daemon" / "config.py") <= {"errors"}


def test_gsm_never_imports_daemon() -> None:
    for path in (ROOT / "gsm").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("daemon"), path
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("daemon") for a in node.names), path


def test_every_package_says_what_it_owns_and_may_import() -> None:
    for init in (ROOT / "daemon").glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc, init

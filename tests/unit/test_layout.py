"""The layout's rules (docs/architecture.md, "Where things live"), checked on the source."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

LOWER = ("api.store", "api.cloud", "api.orchestration", "api.reporting", "api.observability")
UPPER = ("api.web", "api.ui", "api.cli")
VIEWS = ("api.web.jobs", "api.web.reports", "api.web.service", "api.web.callbacks", "api.ui.views")


def modules(*folders: str) -> Iterator[tuple[str, Path]]:
    """Each module's dotted name and path under the given folders."""
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            name = ".".join(parts)
            if folder.startswith("clients/"):
                name = name.removeprefix("clients.python.")
            yield name, path


def imports(path: Path) -> set[str]:
    """Every module a file imports at run time (imports under `if TYPE_CHECKING:` excluded)."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for child in node.body for n in ast.walk(child))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def under(name: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(rule: str) -> list[str]:
    out = []
    for name, path in modules("api", "handlers", "clients/python"):
        for imported in imports(path):
            bad = {
                "api imports handlers only where the parts are composed (create_app, the command line)":
                    under(name, "api") and name != "api.web.app" and not under(name, "api.cli")
                    and under(imported, "handlers"),
                "lower layers never import the web, the dashboard or the CLI":
                    under(name, LOWER) and under(imported, UPPER),
                "no view imports another view":
                    under(name, VIEWS) and under(imported, VIEWS) and not under(imported, name),
                "the server imports neither bench nor the emulator (dev may start the emulator)":
                    under(imported, ("bench", "emulator")) and name != "api.cli.dev",
                "handlers import no Flask": under(name, "handlers") and under(imported, ("flask", "werkzeug")),
                "the client imports nothing of the server":
                    under(name, "cloudjobs_client") and under(imported, ("api", "handlers", "emulator", "bench")),
            }[rule]
            if bad:
                out.append(f"{name} imports {imported}")
    return sorted(set(out))


@pytest.mark.parametrize("rule", [
    "api imports handlers only where the parts are composed (create_app, the command line)",
    "lower layers never import the web, the dashboard or the CLI",
    "no view imports another view",
    "the server imports neither bench nor the emulator (dev may start the emulator)",
    "handlers import no Flask",
    "the client imports nothing of the server",
])
def test_dependencies_run_one_way(rule: str) -> None:
    assert violations(rule) == []


def test_importing_what_job_authors_use_loads_no_flask() -> None:
    code = ("import sys, handlers, handlers.run, handlers.builtin; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'werkzeug')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_map_in_the_docs_names_every_room() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    rooms = sorted({p.parent.relative_to(ROOT).as_posix() + "/" for p in (ROOT / "api").glob("*/__init__.py")})
    missing = [room for room in rooms if room.removeprefix("api/") not in doc]
    assert not missing, f"docs/architecture.md does not map {missing}"

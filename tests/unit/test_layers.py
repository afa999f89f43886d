"""The package's stages import one way (docs/architecture.md, module map).

A module may import from its own stage, a lower one, or the base; never from a
higher stage. ``collector`` and ``fakefs`` sit beside ``service`` at the top,
``cli`` and ``__main__`` above everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "eslcdr"

RANK = {
    "base": 0, "esl": 1, "ingest": 2, "store": 3, "query": 4, "web": 5, "api": 6,
    "service": 7, "collector": 7, "fakefs": 7, "cli": 8, "__main__": 9,
}
BASE = {"__init__", "config", "settings", "backoff", "supervise", "keepalive", "static"}
# Imports between the top stages, each with its reason: the collector speaks
# systemd's notify protocol as the daemon does; the demo runs the stand-in.
LATERAL = {("collector", "service"), ("service", "fakefs")}


def stage(parts: list[str]) -> str:
    """The stage of a module given its dotted name inside the package."""
    if not parts:
        return "base"
    return "base" if parts[0] in BASE else parts[0]


def module_parts(package: Path, path: Path) -> list[str]:
    parts = list(path.relative_to(package).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported(package: Path, path: Path) -> list[tuple[int, list[str]]]:
    """(line, dotted name inside the package) of every package module the file imports."""
    own = module_parts(package, path)
    here = own if path.name == "__init__.py" else own[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = here[: len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif (node.module or "").split(".")[0] == package.name:
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:  # a name may be a module of the target package
                sub = package.joinpath(*target, alias.name)
                is_module = sub.is_dir() or sub.with_suffix(".py").exists()
                out.append((node.lineno, target + [alias.name] if is_module else target))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[1:]) for alias in node.names
                    if alias.name.split(".")[0] == package.name]
    return out


def upward_imports(package: Path) -> list[str]:
    upward = []
    for path in sorted(package.rglob("*.py")):
        mine = stage(module_parts(package, path))
        for line, target in imported(package, path):
            theirs = stage(target)
            lateral = RANK[theirs] == RANK[mine] and theirs != mine and (mine, theirs) not in LATERAL
            if RANK[theirs] > RANK[mine] or lateral:
                upward.append("%s:%d imports %s" % (path.relative_to(package.parent), line, ".".join(target)))
    return upward


def test_every_module_has_a_known_stage():
    unknown = sorted({stage(module_parts(PACKAGE, p)) for p in PACKAGE.rglob("*.py")} - set(RANK))
    assert unknown == []


def test_no_module_imports_a_higher_stage():
    assert upward_imports(PACKAGE) == []


def test_the_check_catches_an_upward_import(tmp_path):
    package = tmp_path / "eslcdr"
    for name in ("api", "store", "query"):
        (package / name).mkdir(parents=True)
        (package / name / "__init__.py").write_text("")
    (package / "api" / "tokens.py").write_text("X = 1\n")
    (package / "query" / "kazoo.py").write_text("from ..store import db\n")
    (package / "store" / "db.py").write_text("from .. import config\n")
    (package / "store" / "retention.py").write_text("from ..api.tokens import X\nfrom eslcdr.api import tokens\n")
    assert upward_imports(package) == ["eslcdr/store/retention.py:1 imports api.tokens",
                                       "eslcdr/store/retention.py:2 imports api.tokens"]

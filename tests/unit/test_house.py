"""The house rules a program can check, over every module of eslcdr/ (docs/development.md).

Module docstrings (present, at most 15 lines of at most 100 characters), module size, the
``log = structlog.get_logger(__name__)`` logger, named exceptions, waits with a timeout,
bounded queues, frozen dataclasses, a leading underscore private to its module, no secret
passed to a log line.  Each check is a function over a package folder, so the tests below
also show it catching what it is meant to catch.  An allow-list names each accepted
exception (an fnmatch pattern) with its reason; ``KNOWN`` ones are findings in files edited
elsewhere at the time, to be fixed and removed from the list (a stale entry fails its test).
These rules moved here from test_docs.py (docstrings, size, private imports, loggers).
"""

from __future__ import annotations

import ast
import copy
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "eslcdr"
TESTS = ROOT / "tests"

# A module's docstring says what it owns and its invariants in at most this many
# lines of at most this many characters (the rest belongs on a docs/ page or beside
# the code it is about); a module longer than MAX_MODULE_LINES says why in its
# docstring, after LONG_REASON.
MAX_DOCSTRING_LINES = 15
MAX_DOCSTRING_WIDTH = 100
MAX_MODULE_LINES = 500
LONG_REASON = "Why this module is long:"

# -- the accepted exceptions: "path::scope: what" (scope: the enclosing function) -------------

DOCSTRING_ALLOWED: dict[str, str] = {
}

WAIT_ALLOWED: dict[str, str] = {
    # A call in gevent's thread pool cannot be cancelled: a timeout on its wait would
    # leave it running with its connection (a reader given back to the pool while a
    # thread still uses it).  Each call bounds itself: SQLite reads by Reader.call's
    # deadline (statement_timeout), the writer's and backfill's file work by the disk.
    "eslcdr/supervise.py::*": "thread pool: in_thread, ThreadJob.get",
    "eslcdr/query/*::*: *runner.spawn(...).get()": "thread pool: a Reader.call",
    "eslcdr/query/stream.py::PendingChunk.*: self._job.get()": "thread pool: a Reader.call",
    # ReaderPool.acquire opens (or reuses) a connection: it waits for nothing.
    "eslcdr/query/*::*: pool.acquire()": "not a wait",
    "eslcdr/query/pool.py::ReaderPool.*: self.acquire()": "not a wait",
    # HeavyLane.acquire waits at most its ``wait`` (statement_timeout), then StatementTimeout.
    "eslcdr/query/*::*: pool.heavy.acquire()": "bounded inside",
    "eslcdr/query/pool.py::HeavyLane.slot: self.acquire()": "bounded inside",
}

QUEUE_ALLOWED: dict[str, str] = {
    # Trimmed to the samples of the last RATE_WINDOW seconds on every update.
    "eslcdr/service/demo.py::Rate.__init__: deque()": "bounded by time",
}

EXCEPT_ALLOWED: dict[str, str] = {
    # The error is carried to the greenlet that waits for the result and raised there.
    "eslcdr/query/reader.py::Done.__init__: except Exception": "carried to get()",
    "eslcdr/collector/readside.py::_caught: except Exception": "carried to the reader",
}

LOGGER_ALLOWED: dict[str, str] = {
}

PRIVATE_ALLOWED: dict[str, str] = {}

# -- reading the modules -------------------------------------------------------------------


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def name_of(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def scoped(tree: ast.AST):
    """(node, enclosing qualified scope) for every node of a module."""
    stack = [(tree, "<module>")]
    while stack:
        node, scope = stack.pop()
        yield node, scope
        inner = scope
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            inner = node.name if scope == "<module>" else "%s.%s" % (scope, node.name)
        stack.extend((child, inner) for child in ast.iter_child_nodes(node))


def short(node: ast.Call) -> str:
    """A call as written, with ``...`` for the arguments of the calls in it and for
    its own arguments that are expressions."""
    node = copy.deepcopy(node)
    for inner in ast.walk(node.func):
        if isinstance(inner, ast.Call) and (inner.args or inner.keywords):
            inner.args, inner.keywords = [ast.Name("...")], []
    node.args = [a if isinstance(a, (ast.Name, ast.Constant, ast.Attribute)) else ast.Name("...") for a in node.args]
    return ast.unparse(node)


def keywords(node: ast.Call) -> set[str]:
    return {k.arg for k in node.keywords if k.arg}


# -- the checks ----------------------------------------------------------------------------


def docstring_findings(package: Path) -> list[str]:
    out = []
    root = package.parent
    for path in python_files(package):
        tree = ast.parse(path.read_text())
        name = name_of(path, root)
        first = tree.body[0] if tree.body else None
        if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)):
            out.append("%s: no module docstring" % name)
            continue
        lines = (ast.get_docstring(tree) or "").splitlines()
        if len(lines) > MAX_DOCSTRING_LINES:
            out.append("%s: docstring of %d lines" % (name, len(lines)))
        source = path.read_text().splitlines()[first.lineno - 1: first.end_lineno]
        for number, line in enumerate(source, 1):
            if len(line) > MAX_DOCSTRING_WIDTH:
                out.append("%s: docstring line %d is %d characters" % (name, number, len(line)))
    return out


def size_findings(package: Path) -> list[str]:
    out = []
    for path in python_files(package):
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES and LONG_REASON not in (ast.get_docstring(ast.parse(text)) or ""):
            out.append("%s: %d lines, and its docstring does not say why" % (name_of(path, package.parent), lines))
    return out


# Method calls that wait: with no argument (and no timeout) they wait for ever.
WAITING_METHODS = {"get", "wait", "join", "acquire", "communicate"}
# Calls whose timeout is a keyword or the argument at this place (1-based).
TIMEOUT_PLACE = {"joinall": 2, "gevent.wait": 2, "create_connection": 2, "HTTPConnection": 3,
                 "HTTPSConnection": 3, "urlopen": 3}
SUBPROCESS_WAITS = {"subprocess.run", "subprocess.call", "subprocess.check_call", "subprocess.check_output"}


def wait_findings(package: Path) -> list[str]:
    """Waits with no timeout: ``x.get()``, ``x.wait()``, ``x.join()``, ``x.acquire()``,
    ``x.put(item)`` (a queue's), a thread pool's ``apply``, ``gevent.joinall``, sockets
    and subprocesses opened without one, psycopg connections without connect_timeout.
    A socket's own operations take the timeout set on it: not checked here."""
    out = []
    root = package.parent
    for path in python_files(package):
        for node, scope in scoped(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func, given = node.func, keywords(node) & {"timeout", "connect_timeout", "block"}
            dotted = ast.unparse(func)
            method = func.attr if isinstance(func, ast.Attribute) else None
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Constant):
                continue  # "".join(...)
            place = TIMEOUT_PLACE.get(dotted, TIMEOUT_PLACE.get(dotted.split(".")[-1]))
            waits = (
                (method in WAITING_METHODS and not node.args and not given)
                or (method == "put" and len(node.args) == 1 and not given)
                or dotted.endswith("threadpool.apply")
                or (dotted == "psycopg.connect" and not given)
                or (place is not None and not given and len(node.args) < place)
                or (dotted in SUBPROCESS_WAITS and not given)
            )
            if waits:
                out.append("%s::%s: %s" % (name_of(path, root), scope, short(node)))
    return out


QUEUE_TYPES = {"Queue", "JoinableQueue", "PriorityQueue", "LifoQueue", "SimpleQueue", "Channel"}


def queue_findings(package: Path) -> list[str]:
    """Queues made without a bound (``maxsize`` / ``maxlen``)."""
    out = []
    for path in python_files(package):
        for node, scope in scoped(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func).split(".")[-1]
            bound = node.args[1:2] if name == "deque" else node.args[:1]
            bound = bound or [k.value for k in node.keywords if k.arg in ("maxsize", "maxlen")]
            unbounded = not bound or (isinstance(bound[0], ast.Constant) and not bound[0].value)
            if (name in QUEUE_TYPES or name == "deque") and (unbounded or name in ("SimpleQueue", "Channel")):
                out.append("%s::%s: %s" % (name_of(path, package.parent), scope, short(node)))
    return out


def _logs(body: list[ast.stmt]) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
               and isinstance(n.func.value, ast.Name) and n.func.value.id == "log"
               for stmt in body for n in ast.walk(stmt))


def _reraises(body: list[ast.stmt]) -> bool:
    """A bare ``raise``: the handler cleans up and lets the error go on."""
    return any(isinstance(n, ast.Raise) and n.exc is None for stmt in body for n in ast.walk(stmt))


def exception_findings(package: Path) -> list[str]:
    """``except:``; ``raise Exception`` / ``BaseException``; ``except Exception`` /
    ``BaseException`` whose handler neither re-raises (a bare ``raise``) nor logs: a
    broad catch is a supervision boundary with its log line, or a clean-up."""
    out = []
    for path in python_files(package):
        where = name_of(path, package.parent)
        for node, scope in scoped(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler):
                caught = ast.unparse(node.type) if node.type is not None else None
                if caught is None:
                    out.append("%s::%s: except:" % (where, scope))
                elif caught in ("Exception", "BaseException") and not _reraises(node.body) and not _logs(node.body):
                    out.append("%s::%s: except %s" % (where, scope, caught))
            elif isinstance(node, ast.Raise) and node.exc is not None:
                raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(raised, ast.Name) and raised.id in ("Exception", "BaseException"):
                    out.append("%s::%s: raise %s" % (where, scope, raised.id))
    return out


LOGGER = "log = structlog.get_logger(__name__)"


def logger_findings(package: Path) -> list[str]:
    """A module that logs defines ``log`` as LOGGER at its top level, before its first
    function or class; no other logger; a module that defines it logs."""
    out = []
    for path in python_files(package):
        tree = ast.parse(path.read_text())
        where = name_of(path, package.parent)
        defined = [n for n in tree.body if isinstance(n, ast.Assign) and ast.unparse(n) == LOGGER]
        first_def = min((n.lineno for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))),
                        default=None)
        uses = any(isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "log"
                   for n in ast.walk(tree))
        others = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                  and ast.unparse(n.func).split(".")[-1] in ("get_logger", "getLogger")]
        if uses and not defined:
            out.append("%s: logs without %s" % (where, LOGGER))
        if defined and first_def is not None and defined[0].lineno > first_def:
            out.append("%s: log defined below its first function or class" % where)
        if len(others) > len(defined):
            out.append("%s: another logger than %s" % (where, LOGGER))
        if defined and not uses:
            out.append("%s: defines log and never logs" % where)
    return out


def dataclass_findings(package: Path) -> list[str]:
    out = []
    for path in python_files(package):
        for node, scope in scoped(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            for decorator in node.decorator_list:
                text = ast.unparse(decorator)
                if text.split("(")[0].split(".")[-1] == "dataclass" and "frozen=True" not in text:
                    out.append("%s: %s is not frozen" % (name_of(path, package.parent), node.name))
    return out


def private_findings(package: Path, *folders: Path) -> list[str]:
    """Another module's ``_name`` of the package, imported (``from m import _x``) or
    reached through the module (``m._x``), in the package and in ``folders``."""
    out = []
    root = package.parent
    for folder in (package, *folders):
        for path in python_files(folder):
            tree = ast.parse(path.read_text())
            parts = list(path.relative_to(root).with_suffix("").parts)
            here = parts[:-1]
            modules = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    if node.level:
                        target = here[: len(here) - (node.level - 1)] + (node.module or "").split(".")
                    else:
                        target = (node.module or "").split(".")
                    target = [t for t in target if t]
                    if not target or target[0] != package.name:
                        continue
                    for alias in node.names:
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            out.append("%s: from %s import %s" % (name_of(path, root), ".".join(target), alias.name))
                        sub = root.joinpath(*target, alias.name)
                        if sub.is_dir() or sub.with_suffix(".py").exists():
                            modules.add(alias.asname or alias.name)
                elif isinstance(node, ast.Import):
                    modules.update(a.asname for a in node.names if a.asname and a.name.split(".")[0] == package.name)
            for node in ast.walk(tree):
                if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                        and node.attr.startswith("_") and not node.attr.startswith("__")):
                    out.append("%s: %s.%s" % (name_of(path, root), node.value.id, node.attr))
    return sorted(set(out))


SECRET_WORDS = ("password", "passwd", "token", "secret", "dsn", "authorization", "cookie")


def secret_log_findings(package: Path) -> list[str]:
    """A log line given a value under a secret's name (``token=...``, ``dsn=...``)."""
    out = []
    for path in python_files(package):
        for node, scope in scoped(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "log"):
                for key in keywords(node):
                    if any(word in key.lower() for word in SECRET_WORDS):
                        out.append("%s::%s: log.%s(%s=...)" % (name_of(path, package.parent), scope,
                                                              node.func.attr, key))
    return out


def unexpected(found: list[str], allowed: dict[str, str]) -> list[str]:
    """The findings no entry of ``allowed`` (fnmatch patterns) covers."""
    return [finding for finding in found if not any(fnmatchcase(finding, entry) for entry in allowed)]


# -- the tree keeps them --------------------------------------------------------------------


def test_every_module_has_a_short_docstring_of_short_lines():
    assert unexpected(docstring_findings(PACKAGE), DOCSTRING_ALLOWED) == []


def test_no_module_is_above_500_lines_without_saying_why():
    assert size_findings(PACKAGE) == []


def test_every_wait_has_a_timeout():
    assert unexpected(wait_findings(PACKAGE), WAIT_ALLOWED) == []


def test_every_queue_is_bounded():
    assert unexpected(queue_findings(PACKAGE), QUEUE_ALLOWED) == []


def test_exceptions_are_named_and_a_broad_catch_logs_or_raises():
    assert unexpected(exception_findings(PACKAGE), EXCEPT_ALLOWED) == []


def test_a_module_that_logs_has_its_structlog_logger_at_the_top():
    assert unexpected(logger_findings(PACKAGE), LOGGER_ALLOWED) == []


def test_every_dataclass_is_frozen():
    assert dataclass_findings(PACKAGE) == []


def test_no_module_reaches_into_another_module_s_private_names():
    assert unexpected(private_findings(PACKAGE, TESTS), PRIVATE_ALLOWED) == []


def test_no_log_line_is_given_a_secret():
    assert secret_log_findings(PACKAGE) == []


def test_the_allow_lists_name_only_findings_still_there():
    # Once a finding is fixed its entry goes: a stale one would excuse it again later.
    found = {
        "docstring": (docstring_findings(PACKAGE), DOCSTRING_ALLOWED),
        "wait": (wait_findings(PACKAGE), WAIT_ALLOWED),
        "queue": (queue_findings(PACKAGE), QUEUE_ALLOWED),
        "except": (exception_findings(PACKAGE), EXCEPT_ALLOWED),
        "logger": (logger_findings(PACKAGE), LOGGER_ALLOWED),
        "private": (private_findings(PACKAGE, TESTS), PRIVATE_ALLOWED),
    }
    stale = {kind: [entry for entry in allowed if not any(fnmatchcase(f, entry) for f in findings)]
             for kind, (findings, allowed) in found.items()}
    assert {kind: entries for kind, entries in stale.items() if entries} == {}


# -- the checks catch what they are for -----------------------------------------------------


@pytest.fixture
def package(tmp_path):
    root = tmp_path / "eslcdr"
    (root / "store").mkdir(parents=True)
    (root / "__init__.py").write_text('"""The package."""\n')
    (root / "store" / "__init__.py").write_text('"""A stage."""\n')
    return root


def write(package: Path, name: str, text: str) -> None:
    (package / name).write_text(text)


def test_the_checks_catch_each_kind_of_finding(package):
    write(package, "bad.py", "\n".join([
        "import collections, gevent.queue, psycopg, structlog",
        "from dataclasses import dataclass",
        "from .store import _hidden",
        "from . import store",
        "logger = structlog.get_logger('x')",
        "q = gevent.queue.Queue()",
        "d = collections.deque()",
        "@dataclass",
        "class Row:",
        "    x: int",
        "def f(result, event, sock):",
        "    store._hidden()",
        "    psycopg.connect('dbname=x')",
        "    try:",
        "        result.get()",
        "    except:",
        "        pass",
        "    try:",
        "        event.wait()",
        "    except Exception:",
        "        pass",
        "    q.put(1)",
        "    raise Exception('x')",
    ]) + "\n")
    write(package, "long.py", '"""%s\n\n%s\n"""\n' % ("x" * 101, "\n".join(["line"] * 15)) + "pass\n" * 500)
    write(package, "quiet.py", '"""Logs."""\nimport structlog\nlog = structlog.get_logger(__name__)\n'
                               'def f(token):\n    log.info("x", token=token)\n')
    assert docstring_findings(package) == [
        "eslcdr/bad.py: no module docstring",
        "eslcdr/long.py: docstring of 17 lines",
        "eslcdr/long.py: docstring line 1 is 104 characters",
    ]
    assert size_findings(package) == ["eslcdr/long.py: 518 lines, and its docstring does not say why"]
    assert wait_findings(package) == [
        "eslcdr/bad.py::f: q.put(1)",
        "eslcdr/bad.py::f: event.wait()",
        "eslcdr/bad.py::f: result.get()",
        "eslcdr/bad.py::f: psycopg.connect('dbname=x')",
    ]
    assert sorted(queue_findings(package)) == ["eslcdr/bad.py::<module>: collections.deque()",
                                               "eslcdr/bad.py::<module>: gevent.queue.Queue()"]
    assert sorted(exception_findings(package)) == [
        "eslcdr/bad.py::f: except Exception", "eslcdr/bad.py::f: except:", "eslcdr/bad.py::f: raise Exception"]
    assert logger_findings(package) == ["eslcdr/bad.py: another logger than " + LOGGER]
    assert dataclass_findings(package) == ["eslcdr/bad.py: Row is not frozen"]
    assert private_findings(package) == ["eslcdr/bad.py: from eslcdr.store import _hidden",
                                         "eslcdr/bad.py: store._hidden"]
    assert secret_log_findings(package) == ["eslcdr/quiet.py::f: log.info(token=...)"]


def test_the_checks_pass_what_the_rules_allow(package):
    write(package, "good.py", "\n".join([
        '"""Good."""',
        "import collections, gevent.queue, psycopg, structlog",
        "from dataclasses import dataclass",
        "log = structlog.get_logger(__name__)",
        "q = gevent.queue.Queue(10)",
        "d = collections.deque((), 5)",
        "@dataclass(frozen=True)",
        "class Row:",
        "    x: int",
        "def f(result, event, items, mapping):",
        "    psycopg.connect('dbname=x', connect_timeout=2)",
        "    try:",
        "        result.get(timeout=1)",
        "        event.wait(2)",
        "        q.put(1, timeout=1)",
        "        mapping.get('k')",
        "        return ', '.join(items)",
        "    except Exception:",
        "        log.exception('f_failed')",
        "    except BaseException:",
        "        raise",
    ]) + "\n")
    for check in (docstring_findings, size_findings, wait_findings, queue_findings, exception_findings,
                  logger_findings, dataclass_findings, private_findings, secret_log_findings):
        assert check(package) == [], check.__name__

"""The pages of docs/ (and the README) document what the code has.

Every command and option (docs/cli.md), every config key in its section
(docs/configuration.md), every column with its description
(docs/database.md), every route of the API (docs/api.md), every module
(docs/architecture.md; its docstring: test_house.py) and every test file
(docs/development.md); the ``curl`` and ``sqlite3`` examples run (the
``psql`` ones in test_collector_store.py); every relative link resolves,
and the README links every page.
"""

from __future__ import annotations

import pytest
import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from eslcdr.api import app as api
from eslcdr.store import db as store
from eslcdr.cli import build_parser
from eslcdr.collector import config as collector_config
from eslcdr.collector import pgmigrations, pgschema
from eslcdr.config import DEFAULTS, from_mapping
from eslcdr.query.reader import InlineRunner
from eslcdr.store.schema import COLUMNS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
# The topics of docs/, one page each.
PAGES = ("install", "configuration", "cli", "backfill", "architecture", "database", "api", "collector", "page",
         "development")
README_MAX_LINES = 150
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def page(name: str) -> str:
    """The text of docs/<name>.md."""
    return (DOCS / (name + ".md")).read_text()


def doc_files() -> list[Path]:
    return [README] + sorted(DOCS.glob("*.md"))


def docs_text() -> str:
    """The README and every page, one text."""
    return "\n".join(path.read_text() for path in doc_files())


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(r"^```%s\n(.*?)^```[ \t]*$" % re.escape(language), text, re.M | re.S)


def table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row (header and rule rows too)."""
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            for line in text.splitlines() if line.startswith("|")]


def test_every_topic_has_its_page():
    assert [name for name in PAGES if not (DOCS / (name + ".md")).is_file()] == []


# ------------------------------------------------------------------ cli.md


def subcommands(parser: argparse.ArgumentParser, prefix: str = "eslcdr"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subcommands(sub, prefix + " " + name)
            return
    yield prefix, parser


def test_every_command_and_option_documented():
    text = page("cli")
    missing = []
    for command, parser in subcommands(build_parser()):
        if "`" + command not in text:
            missing.append(command)
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option not in ("--help", "--version") and option not in text:
                    missing.append("%s %s" % (command, option))
    assert missing == []


# ---------------------------------------------------------- configuration.md


def keys_by_section(text: str) -> dict[str, set[str]]:
    """Section -> the keys named in its table rows (`[esl:NAME]` counts as
    `esl`; a row with an empty first cell continues the section above)."""
    found: dict[str, set[str]] = collections.defaultdict(set)
    section = None
    for cells in table_rows(text):
        if not cells:
            continue
        named = re.match(r"`\[([a-z]+)(?::[A-Z]+)?\]`", cells[0])
        if named:
            section = named.group(1)
        elif cells[0]:
            section = None
        if section is not None:
            found[section].update(re.findall(r"`([a-z_]+)`", " ".join(cells[1:])))
    return found


def test_every_config_key_documented_in_its_section():
    daemon, collector = page("configuration").split("\n## collector.ini\n", 1)
    for defaults, text in ((DEFAULTS, daemon), (collector_config.DEFAULTS, collector)):
        found = keys_by_section(text)
        missing = ["[%s] %s" % (section, key) for section, keys in defaults.items() for key in keys
                   if key not in found.get(section, set())]
        assert missing == []


# --------------------------------------------------------------- database.md


def test_every_column_documented_with_its_description():
    text = page("database")
    for name, sql_type, description in COLUMNS:
        row = r"^\| `%s` \| %s \| %s \|$" % (re.escape(name), sql_type.split()[0], re.escape(description))
        assert re.search(row, text, re.M), name


# -------------------------------------------------------------------- api.md


def documented_routes(text: str) -> set[tuple[str, str]]:
    """(method, path) of every code span that is a path; placeholders as {}."""
    routes = set()
    for span in re.findall(r"`([^`\n]+)`", text):
        match = re.fullmatch(r"(?:(GET|PUT|POST|DELETE) )?(/[^\s?#]*)(?:[?#].*)?", span)
        if match:
            routes.add((match.group(1) or "GET", re.sub(r"\{[A-Za-z_]+\}", "{}", match.group(2))))
    return routes


def app_routes(tmp_path: Path) -> set[tuple[str, str]]:
    config = from_mapping({"store": {"path": str(tmp_path / "cdrs.db")},
                           "api": {"tokens_file": str(tmp_path / "tokens")}})
    (tmp_path / "tokens").write_text("")
    app = api.create_app(config, runner=InlineRunner())
    try:
        return {(route.method, re.sub(r"<[^>]+>", "{}", route.rule))
                for route in app.bottle.routes if route.method != "OPTIONS"}
    finally:
        app.close()


def test_every_route_documented(tmp_path):
    routes = app_routes(tmp_path)
    assert len(routes) >= 20
    documented = documented_routes(page("api"))
    assert sorted(routes - documented) == []
    # and nothing documented as a route that the app does not serve
    assert sorted(r for r in documented if r[1].startswith(("/v2/", "/ui")) and r not in routes) == []


# ----------------------------------------------------- architecture.md, development.md


def test_module_map_names_every_module_and_only_modules():
    text = page("architecture")
    modules = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "eslcdr").rglob("*.py"))
    assert [m for m in modules if "| `%s` |" % m not in text] == []
    named = [cells[0].strip("`") for cells in table_rows(text) if cells and cells[0].startswith("`eslcdr/")]
    assert len(named) >= len(modules)
    assert [name for name in named if not (ROOT / name).exists()] == []


def test_development_page_lists_every_test_file():
    text = page("development")
    files = sorted(str(path.relative_to(ROOT / "tests")) for path in (ROOT / "tests").rglob("*.py")
                   if path.name != "__init__.py" and "data" not in path.relative_to(ROOT / "tests").parts)
    assert [name for name in files if "`%s`" % name not in text] == []
    assert "make test" in text


# ------------------------------------------------------------------ README


def test_readme_names_the_two_setup_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_readme_is_an_overview():
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, "README.md has %d lines: move the details into docs/" % lines


def test_readme_install_steps_are_those_of_the_install_page():
    readme = README.read_text().split("\n## Install\n", 1)[1]
    steps = code_blocks(readme, "sh")[0]
    assert "make install" in steps and steps in code_blocks(page("install"), "sh")


def test_readme_links_every_page():
    targets = {os.path.normpath(target.split("#")[0]) for target in LINK.findall(FENCE.sub("", README.read_text()))}
    pages = sorted("docs/" + path.name for path in DOCS.glob("*.md"))
    assert len(pages) >= len(PAGES)
    assert [name for name in pages if name not in targets] == []


# ------------------------------------------------------------------- links


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: collections.Counter[str] = collections.Counter()
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        heading = re.match(r"#{1,6} (.+)", line)
        if heading:
            base = slug(heading.group(1))
            out.add(base if not seen[base] else "%s-%d" % (base, seen[base]))
            seen[base] += 1
    return out


def test_every_relative_link_resolves():
    broken = []
    checked = 0
    for path in doc_files():
        for target in LINK.findall(FENCE.sub("", path.read_text())):
            if re.match(r"[a-z]+:", target):
                continue
            checked += 1
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append("%s: %s (no such file)" % (path.name, target))
            elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
                broken.append("%s: %s (no such heading)" % (path.name, target))
    assert checked >= 30
    assert broken == []


def test_slug_is_githubs():
    assert slug("The page (`/ui`)") == "the-page-ui"
    assert slug("Backfill from FreeSWITCH's mod_json_cdr files") == "backfill-from-freeswitchs-mod_json_cdr-files"
    assert slug("`[store]`: retention") == "store-retention"


# ------------------------------------------------------------------ examples


@pytest.mark.subprocess
def test_sqlite_examples_run(tmp_path):
    from tests.unit.api.test_api import G, leg

    examples = re.findall(r"sqlite3 (\S+\.db) (\"[^\"\n]+\"|'[^'\n]+')", docs_text())
    assert len(examples) >= 4
    sqlite3 = shutil.which("sqlite3")
    assert sqlite3, "the sqlite3 command is missing (make test installs Debian's sqlite3)"
    for name in {db for db, _ in examples}:
        conn = store.connect_writer(tmp_path / name)
        store.insert_records(conn, [leg(G + 1_800_000_000 + i, custom_sip_headers={"x_account_id": "acc-%d" % i})
                                    for i in range(3)])
        conn.close()
    for db, sql in examples:
        result = subprocess.run([sqlite3, db, sql[1:-1]], cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert (result.returncode, result.stderr) == (0, ""), (sql, result.stderr)
        assert result.stdout.strip(), sql


def example_blocks(text: str) -> list[str]:
    """The ```sh blocks made only of curl commands (and the token they use)."""
    out = []
    for block in code_blocks(text, "sh"):
        lines = [line for line in block.splitlines() if line.strip()]
        if lines and all(line.startswith(("curl ", "T=$(")) for line in lines):
            out.append(block)
    return out


@pytest.mark.subprocess
def test_curl_examples_run_against_a_real_daemon(tmp_path):
    """Every curl example, as written (address, token and account filled in),
    against ``eslcdr run`` recording generated calls."""
    from tests.e2e.test_collect_e2e import MediaServer

    blocks = example_blocks(docs_text())
    script = "\n".join(blocks)
    assert script.count("curl ") >= 6 and "http://127.0.0.1:8080/" in script
    curl = shutil.which("curl")
    assert curl, "the curl command is missing (make test installs Debian's curl)"
    eslcdr = Path(sys.executable).parent / "eslcdr"
    assert eslcdr.exists()
    server = MediaServer(tmp_path, "fs-docs", calls=30, seed=3)
    try:
        rows = server.settled_rows(30)
        account, legs = collections.Counter(r["account_id"] for r in rows if r["account_id"]).most_common(1)[0]
        assert legs > 10  # more than the example's page_size=10: its answer has a next page
        script = (script.replace("http://127.0.0.1:8080/", server.url + "/")
                  .replace("/accounts/ACCOUNT/", "/accounts/%s/" % account)
                  .replace("/etc/eslcdr/tokens", str(server.root / "tokens")))
        # --fail: an HTTP error stops the script (set -e)
        prelude = "set -e\ncurl() { command %s --fail --show-error --max-time 30 \"$@\"; }\n" % curl
        result = subprocess.run(["bash", "-c", prelude + script], cwd=tmp_path, capture_output=True, text=True,
                                timeout=120, env=dict(os.environ, PATH="%s:%s" % (eslcdr.parent, os.environ["PATH"])))
    finally:
        server.close()
    assert result.returncode == 0, result.stderr[-2000:]
    for answer in ('"auth_token"', '"next_start_key"', '"next_after"', '"totals"', '"buckets"'):
        assert answer in result.stdout, answer
    csv = (tmp_path / "cdrs.csv").read_text()
    assert sum(1 for r in rows if r["account_id"] == account and r["id"] in csv) >= 1


def test_the_code_cites_only_files_of_the_repository():
    # Docstrings and comments point at docs/ pages and tests by path; each must
    # exist (a move that forgets one fails here), and none cites DESIGN.md,
    # which is not in the repository.
    cited = re.compile(r"(?<![\w/.])((?:docs|tests|bench|conf|systemd)/[\w./-]+\.(?:md|py|ini|service))")
    missing, design = [], []
    for path in sorted((ROOT / "eslcdr").rglob("*.py")):
        text = path.read_text()
        missing += ["%s: %s" % (path.relative_to(ROOT), name) for name in cited.findall(text)
                    if not (ROOT / name).exists()]
        design += [str(path.relative_to(ROOT))] if "DESIGN" in text else []
    assert missing == [] and design == []


@pytest.mark.subprocess
def test_bench_distributes_every_table_by_the_citus_block_of_the_docs():
    """bench/central.py --citus runs docs/collector.md's Citus block (the SQL
    is written there only): it finds the block, and the block places every
    table the schema creates (eslcdr_schema, the migrations' own, aside)."""
    code = ("import sys; sys.argv = ['central']; sys.path.insert(0, 'bench'); import central;"
            " print('\\n'.join(central.citus_statements()))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    statements = result.stdout.strip().splitlines()
    assert statements[0] == "CREATE EXTENSION IF NOT EXISTS citus"
    assert all("--" not in s and ";" not in s for s in statements), statements
    schema = (ROOT / "eslcdr" / "collector" / "pgmigrations.py").read_text()  # every CREATE TABLE
    tables = set(re.findall(r"CREATE TABLE (\w+) ", schema)) - {"IF"}
    assert len(tables) >= 9, tables
    placed = {re.search(r"\('(\w+)'", s).group(1) for s in statements[1:] if "truncate_local" not in s}
    assert placed == tables, (sorted(placed), sorted(tables))


def test_citus_upgrade_places_the_tables_the_later_migrations_create():
    """A distributed database migrated past schema 9: each table a migration
    creates from schema 10 on is local to the coordinator until
    docs/collector.md's upgrade SQL places it as the fresh block does (and
    drops its local copy); and every migration sends the shard commands one at
    a time (Citus refuses schema 9's index otherwise), as the page says."""
    section = page("collector").split("\n## Distributing on Citus\n", 1)[1].split("\n## ", 1)[0]
    fresh, upgrade = section.split("\n### Upgrading a distributed database\n", 1)
    placing = {re.search(r"\('(\w+)'", line).group(1): line.strip()
               for line in code_blocks(fresh, "text")[0].splitlines() if line.startswith("SELECT create_")}
    sql = code_blocks(upgrade, "text")[0]
    created = [name for migration in pgmigrations.MIGRATIONS[9:]
               for name in re.findall(r"CREATE TABLE (\w+) ", migration if isinstance(migration, str) else "")]
    assert set(created) >= {"stats_hours", "stats_hour_causes"}
    missing = [name for name in created if placing[name] not in sql
               or "truncate_local_data_after_distributing_table('%s')" % name not in sql]
    assert missing == []
    assert "pgmigrations.CITUS_SEQUENTIAL" in upgrade
    assert "citus.multi_shard_modify_mode" in pgmigrations.CITUS_SEQUENTIAL

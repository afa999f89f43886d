"""Shared test helpers: the real FreeSWITCH captures in tests/data."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import pytest

from eslcdr.esl.events import EVENT_TYPES, decode_event
from eslcdr.esl.frames import Frame, FrameParser

DATA = Path(__file__).parent / "data"
TESTS = Path(__file__).resolve().parent

# What a test needs, as markers (docs/development.md): set here from the
# fixtures a test takes and the folder it sits in, so no test can forget.
POSTGRES_FIXTURES = frozenset({"pg_dsn", "fresh_database"})
PROCESS_FOLDERS = ("e2e", "compat")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)
        folder = Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0]
        if folder in PROCESS_FOLDERS:
            item.add_marker(pytest.mark.subprocess)
# Every raw capture: the S set at the top, the J set (json_cdr/) and the F call flows (flows/).
CAPTURES = sorted(p.name for p in DATA.glob("*.esl")) + sorted(
    folder + "/" + p.name for folder in ("json_cdr", "flows") for p in (DATA / folder).glob("*.esl"))
SCENARIOS = ("S1", "S2", "S3", "S4", "S5", "S6", "S7")


def capture_bytes(name: str) -> bytes:
    return (DATA / name).read_bytes()


def capture_frames(name: str) -> list[Frame]:
    parser = FrameParser()
    parser.feed(capture_bytes(name))
    items = parser.items()
    assert parser.eof() is None
    assert all(isinstance(item, Frame) for item in items)
    return items


def capture_events(name: str) -> list[dict]:
    return [decode_event(f) for f in capture_frames(name) if f.content_type in EVENT_TYPES]


@pytest.fixture(scope="session")
def events_of():
    cache: dict[str, list[dict]] = {}

    def get(name: str) -> list[dict]:
        if name not in cache:
            cache[name] = capture_events(name if name.endswith(".esl") else name + ".esl")
        return cache[name]

    return get


# ---------------------------------------------------------------- PostgreSQL
# A real PostgreSQL server (the pgserver wheel ships its binaries), started
# once per test session in a temporary folder and deleted after; each test
# that asks for ``pg_dsn`` gets a fresh database on it.


@pytest.fixture(scope="session")
def pg_server():
    import tempfile

    import pgserver

    server = pgserver.get_server(tempfile.mkdtemp(prefix="eslcdr-pg-"), cleanup_mode="delete")
    yield server
    server.cleanup()


_pg_databases = iter(range(1, 10**6))


@contextlib.contextmanager
def fresh_database(server) -> Iterator[str]:
    """A new, empty database on ``server`` (its DSN), dropped after."""
    import psycopg

    name = "t%d" % next(_pg_databases)
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE %s" % name)
    try:
        yield server.get_uri(name)
    finally:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)


@pytest.fixture
def pg_dsn(pg_server):
    with fresh_database(pg_server) as dsn:
        yield dsn

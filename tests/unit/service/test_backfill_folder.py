"""The backfill's folder reading and the json_cdr parser, on real files in
a temporary folder (no daemon: the end-to-end runs are test_backfill_e2e)."""

from __future__ import annotations

import json
import os
import time

import pytest

from eslcdr.service import json_cdr_dir
from eslcdr.service.backfill import BadFiles
from eslcdr.service.importer import JsonCdrError, parse_json_cdr

from tests.conftest import DATA

REAL = sorted((DATA / "json_cdr" / "J_json").glob("*.cdr.json"))
NOW = time.time_ns()


def put(path, source, age_s: float) -> None:
    path.write_bytes(source.read_bytes())
    when = (NOW - int(age_s * 1e9)) / 1e9
    os.utime(path, (when, when))


def listing(folder, since_ns: int, until_ns: int = NOW) -> list[str]:
    subfolders: list = []
    entries = json_cdr_dir.entries(str(folder), since_ns, subfolders)
    names, done = [], False
    while not done:
        found, done = json_cdr_dir.next_files(entries, since_ns, until_ns)
        names += [os.path.relpath(f.path, folder) for f in found]
    return sorted(names)


def test_listing_takes_the_window_and_fresh_rotated_subfolders(tmp_path):
    put(tmp_path / REAL[0].name, REAL[0], age_s=600)  # before the mark
    put(tmp_path / REAL[1].name, REAL[1], age_s=60)
    put(tmp_path / REAL[2].name, REAL[2], age_s=1)  # after "until"
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "dir.cdr.json").mkdir()  # not a file
    old, new = tmp_path / "2026-11-01-00-00-00", tmp_path / "2026-11-30-00-00-00"
    old.mkdir()
    new.mkdir()
    put(old / REAL[3].name, REAL[3], age_s=600)
    put(new / REAL[4].name, REAL[4], age_s=60)
    os.utime(old, ((NOW - 600e9) / 1e9,) * 2)  # rotated away long ago
    since, until = NOW - int(300e9), NOW - int(10e9)
    assert listing(tmp_path, since, until) == sorted([REAL[1].name, os.path.join(new.name, REAL[4].name)])


def test_find_by_name_with_and_without_prefix_and_in_the_newest_subfolder(tmp_path):
    a_leg = next(p for p in REAL if p.name.startswith("a_"))
    b_leg = next(p for p in REAL if not p.name.startswith("a_"))
    put(tmp_path / a_leg.name, a_leg, 5)
    put(tmp_path / b_leg.name, b_leg, 5)
    ids = [json_cdr_dir.call_id_of(a_leg.name), json_cdr_dir.call_id_of(b_leg.name), "no-such-leg"]
    found = json_cdr_dir.find(str(tmp_path), ids, rotating=False)
    assert sorted(os.path.basename(f.path) for f in found) == sorted([a_leg.name, b_leg.name])
    rotated = tmp_path / "2026-11-30-08-00-00"
    rotated.mkdir()
    other = next(p for p in REAL if p not in (a_leg, b_leg))
    put(rotated / other.name, other, 5)
    found = json_cdr_dir.find(str(tmp_path), [json_cdr_dir.call_id_of(other.name)], rotating=True)
    assert [f.path for f in found] == [str(rotated / other.name)]
    read = json_cdr_dir.read_files(found)
    assert read[0].event["Unique-ID"] == json_cdr_dir.call_id_of(other.name)


def test_a_file_naming_another_leg_is_not_used(tmp_path):
    wrong = tmp_path / ("a_%s.cdr.json" % "00000000-0000-4000-8000-000000000000")
    put(wrong, REAL[0], 5)
    read = json_cdr_dir.read_files(json_cdr_dir.find(str(tmp_path), ["00000000-0000-4000-8000-000000000000"], False))
    assert read[0].event is None and "names leg" in read[0].error


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "empty file"),
        (b"  \n", "empty file"),
        (b'{"variables": {"uuid": "x"', "truncated JSON"),
        (b"\x00\x01 binary", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"callflow": []}', "no 'variables' object"),
        (b'{"variables": {"direction": "inbound"}}', "no leg uuid"),
    ],
)
def test_unreadable_files_say_why(raw, reason):
    with pytest.raises(JsonCdrError, match=reason):
        parse_json_cdr(raw)


def test_bytes_that_are_not_utf8_are_replaced_and_the_leg_kept():
    document = json.loads(REAL[0].read_bytes())
    document["callflow"][0]["caller_profile"]["caller_id_name"] = "Ren\udce9"
    raw = json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogateescape")
    event, replaced = parse_json_cdr(raw)
    assert replaced and event["Unique-ID"] == document["variables"]["uuid"]
    assert event["Caller-Caller-ID-Name"] == "Ren\ufffd"
    whole, replaced = parse_json_cdr(REAL[0].read_bytes())
    assert not replaced and whole["Unique-ID"] == event["Unique-ID"]


def test_the_memory_of_unreadable_files_is_bounded_the_oldest_forgotten_first():
    bad = BadFiles(limit=3)
    files = [json_cdr_dir.FileFound("/j/%d.cdr.json" % n, mtime_ns=n, size=10) for n in range(5)]
    assert [bad.add(f) for f in files[:3]] == [True, True, True]
    assert not bad.add(files[0])  # the same file unchanged: no second warning
    assert bad.add(json_cdr_dir.FileFound(files[0].path, mtime_ns=99, size=10))  # changed: news
    assert bad.add(files[3]) and len(bad) == 3  # past the limit: files[1] (oldest) forgotten
    assert [bad.known(f) for f in files[1:4]] == [False, True, True]
    for n in range(5, 1000):
        bad.add(json_cdr_dir.FileFound("/j/%d.cdr.json" % n, mtime_ns=n, size=10))
    assert len(bad) == 3

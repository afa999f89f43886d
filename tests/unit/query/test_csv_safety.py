"""Spreadsheet-safe CSV: a cell a spreadsheet would evaluate gets a leading
apostrophe; phone numbers and plain numbers stay exactly as they are; JSON is
never altered.  Checked by reading the CSV back with the csv module."""

from __future__ import annotations

import csv
import io

from eslcdr.query import kazoo
from eslcdr.store.schema import COLUMN_NAMES

from tests import kazoo_shapes
from tests.unit.api.test_api import ACC_A, NOW_G, env, interaction_id, leg  # noqa: F401 -- env is a fixture

# caller_id_name as sent -> as a spreadsheet must receive it
CASES = {
    "=cmd|' /C calc'!A0": "'=cmd|' /C calc'!A0",
    "=HYPERLINK(\"http://x\")": "'=HYPERLINK(\"http://x\")",
    "@SUM(A1:A9)": "'@SUM(A1:A9)",
    "\tTAB=1": "'\tTAB=1",
    "\rCR": "'\rCR",
    "+442071838750": "+442071838750",
    "-5": "-5",
    "-12.50": "-12.50",
    "+1 (555) 010": "'+1 (555) 010",
    "-2+3+cmd|' /C calc'!A0": "'-2+3+cmd|' /C calc'!A0",
    "+": "'+",
    "Alice = Bob": "Alice = Bob",
    "O'Brien, \"Mary\"": "O'Brien, \"Mary\"",
    "": "",
}


def read_csv(body: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(body.decode("utf-8"), newline="")))


def test_formula_cells_are_neutralised_and_numbers_untouched(env):  # noqa: F811
    iid = interaction_id(NOW_G - 500)
    names = list(CASES)
    env.insert([leg(NOW_G - 100 + i, caller_id_name=name, caller_id_number=name, interaction=iid,
                    created_g=NOW_G - 500 + i) for i, name in enumerate(names)])
    base = "/v2/accounts/%s" % ACC_A
    rows = read_csv(env.get(base + "/cdrs?accept=csv&ascending=true").body)
    assert [row["caller_id_name"] for row in rows] == [CASES[name] for name in names]
    assert [row["caller_id_number"] for row in rows] == [CASES[name] for name in names]
    assert [row["calling_from"] for row in rows] == [CASES[name] for name in names]
    # Full records (legs, one CDR) are rendered by SQLite: the same rule.
    legs = read_csv(env.get(base + "/cdrs/legs/%s?accept=csv" % iid).body)
    assert [row["caller_id_name"] for row in legs] == [CASES[name] for name in names]
    assert list(legs[0]) == kazoo_shapes.csv_header(kazoo_shapes.RECORD_CSV_FIELDS)  # "ID" first, as Kazoo
    first = env.get(base + "/cdrs/legs/%s" % iid).json["data"][0]
    one = read_csv(env.get(base + "/cdrs/%s?accept=csv" % first["id"]).body)
    assert one[0]["caller_id_name"] == CASES[names[0]]
    # Numbers stored as numbers are never touched.
    assert all(row["duration_seconds"].isdigit() for row in legs)


def test_json_is_never_altered(env):  # noqa: F811
    names = list(CASES)
    env.insert([leg(NOW_G - i, caller_id_name=name) for i, name in enumerate(names)])
    listing = env.get("/v2/accounts/%s/cdrs?paginate=false" % ACC_A).json["data"]
    assert [row["caller_id_name"] for row in listing] == names
    detail = env.get("/v2/accounts/%s/cdrs/%s" % (ACC_A, listing[0]["id"])).json["data"]
    assert detail["caller_id_name"] == names[0]


def test_spreadsheet_safe_rule():
    for given, expected in CASES.items():
        assert kazoo.spreadsheet_safe(given) == expected

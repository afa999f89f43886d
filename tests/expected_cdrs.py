"""Expected CDR values for the real FreeSWITCH 1.10.12 captures S1-S7 in tests/data/.

The oracle is data, tests/data/expected_cdrs.json, written by
tests/data/derive_expected_cdrs.py from the raw captures with no eslcdr code
(its docstring gives the rules). The S1-S6 values equal the hand-derived
oracle this file used to hold (every field of the 60 legs, and the calls).

EXPECTED[capture][unique_id] = {field: value}; a field is absent when no source in
the capture defines it (tests check only the keys listed). INTERACTIONS[capture] =
list of sets of Unique-IDs forming one call (same interaction_id inside a set,
different ids across sets). ROW_COUNT[capture] = number of CDR rows (one per leg
with a CHANNEL_HANGUP_COMPLETE; no leg sets process_cdr=false).
"""

from __future__ import annotations

import json
from pathlib import Path

_ORACLE = json.loads((Path(__file__).parent / "data" / "expected_cdrs.json").read_text())["captures"]

EXPECTED: dict[str, dict[str, dict[str, object]]] = {name: c["legs"] for name, c in _ORACLE.items()}
INTERACTIONS: dict[str, list[set[str]]] = {name: [set(call) for call in c["interactions"]]
                                           for name, c in _ORACLE.items()}
ROW_COUNT: dict[str, int] = {name: len(legs) for name, legs in EXPECTED.items()}

# S7: the set of leg ids (each must yield exactly one row).
S7_LEG_IDS: dict[str, set[str]] = {name: set(EXPECTED[name]) for name in ("S7_plain", "S7_json")}


def _self_check() -> None:
    for name, legs in EXPECTED.items():
        seen = [u for call in INTERACTIONS[name] for u in call]
        assert len(seen) == len(set(seen)), name
        assert set(seen) == set(legs), name
        for uid, rec in legs.items():
            assert rec["call_id"] == uid, (name, uid)
    assert ROW_COUNT["S7_plain"] == ROW_COUNT["S7_json"] == 80
    assert all(len(call) == 4 for n in ("S7_plain", "S7_json") for call in INTERACTIONS[n])
    assert len(INTERACTIONS["S7_plain"]) == len(INTERACTIONS["S7_json"]) == 20


_self_check()

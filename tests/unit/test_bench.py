"""The benchmarks of bench/ still run against today's package: each script's
imports resolve and its command line parses (``--help``), so a move of a
module or a test helper they use (the house move did both) shows here, not
when someone needs a figure.  The figures themselves are never asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "bench").glob("*.py"))

pytestmark = pytest.mark.subprocess


def test_there_are_benchmarks():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_each_benchmark_imports_and_parses_its_command_line(script):
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: ")

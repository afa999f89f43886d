"""``make install`` / ``make uninstall`` into a staging root (DESTDIR), file by file.

One real install (a virtualenv, pip installing eslcdr with its dependencies)
is shared by the module; a second install over it, with changed config,
tokens and data, checks the upgrade keeps them.  Under DESTDIR no user is
created and nothing is chowned (see systemd/install.sh), so only modes and
contents are checked here; the real-root run is described in docs/install.md.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT
from tests.e2e.test_systemd import exposure, unit_with_exec, verify_unit

INSTALL_TIMEOUT = 600


def interpreter() -> str:
    """Debian's own Python (PEP 668: no system-wide pip) when it can make a venv."""
    system = "/usr/bin/python3"
    if os.path.exists(system):
        probe = subprocess.run([system, "-c", "import venv, ensurepip"], capture_output=True)
        if probe.returncode == 0:
            return system
    return sys.executable


def make(target: str, destdir: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["make", "-C", str(ROOT), target, "DESTDIR=%s" % destdir, "PYTHON=%s" % interpreter()],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    # Missing fails, never skips (make is what runs the suite: `make test`).
    assert shutil.which("make") is not None, "make is missing: apt-get install make"
    root = tmp_path_factory.mktemp("root")
    first = make("install", root)
    return root, first


def test_program_in_its_own_virtualenv(staged, tmp_path):
    root, _ = staged
    venv = root / "opt/eslcdr"
    assert (venv / "pyvenv.cfg").is_file()
    eslcdr = venv / "bin/eslcdr"
    help_text = subprocess.run([str(eslcdr), "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert help_text.returncode == 0, help_text.stderr
    assert "run" in help_text.stdout and "demo" in help_text.stdout
    # A real install, not an editable one pointing back at the source tree.
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "import eslcdr, eslcdr.service.notify; print(eslcdr.__file__)"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(venv / "lib")), where.stdout
    assert not list(venv.glob("lib/python*/site-packages/__editable__*"))


def test_unit_runs_the_virtualenv_program(staged):
    root, _ = staged
    unit = root / "etc/systemd/system/eslcdr.service"
    assert mode(unit) == 0o644
    text = unit.read_text()
    exec_start = re.search(r"^ExecStart=(\S+) (.*)$", text, re.M)
    assert exec_start is not None
    program, args = exec_start.groups()
    assert program == "/opt/eslcdr/bin/eslcdr"
    assert args == "run -c /etc/eslcdr/eslcdr.ini"
    staged_program = root / program.lstrip("/")
    assert os.access(staged_program, os.X_OK)
    assert subprocess.run([str(staged_program), "run", "--help"], capture_output=True, timeout=60).returncode == 0
    # Every unit the source tree ships is installed (the collector's too).
    shipped = sorted(p.name for p in (ROOT / "systemd").glob("*.service"))
    assert sorted(p.name for p in (root / "etc/systemd/system").glob("*.service")) == shipped


def test_installed_unit_passes_systemd_analyze(staged, tmp_path):
    root, _ = staged
    unit = root / "etc/systemd/system/eslcdr.service"
    assert exposure(unit) <= 2.5
    verify_unit(unit_with_exec(tmp_path, unit, {"/opt/eslcdr/bin/eslcdr": str(root / "opt/eslcdr/bin/eslcdr")}))


def test_config_files_and_modes(staged):
    root, _ = staged
    etc = root / "etc/eslcdr"
    assert (etc / "eslcdr.ini").read_text() == (ROOT / "conf/eslcdr.ini").read_text()
    assert mode(etc / "eslcdr.ini") == 0o644
    assert mode(etc / "tokens") == 0o640
    assert mode(etc / "environment") == 0o600
    assert "ESLCDR_ESL_PASSWORD" in (etc / "environment").read_text()
    assert mode(etc / "collector.environment") == 0o600
    # The installed tokens file parses (comments only: no token yet).
    from eslcdr.api.tokens import load_tokens

    assert load_tokens(etc / "tokens") == ()
    # The collector's tokens likewise: eslcdr collect runs as eslcdr and reads
    # them through its group (a file created by `token add` would be 0600 root).
    assert mode(etc / "collector-tokens") == 0o640 and load_tokens(etc / "collector-tokens") == ()
    sysusers = root / "usr/lib/sysusers.d/eslcdr.conf"
    assert re.search(r"^u eslcdr ", sysusers.read_text(), re.M)
    doc = root / "usr/share/doc/eslcdr"
    assert (doc / "README.md").read_bytes() == (ROOT / "README.md").read_bytes()
    # The pages the README links are beside it, so its links work where it is installed.
    pages = sorted(page.name for page in (ROOT / "docs").iterdir())
    assert "install.md" in pages and sorted(page.name for page in (doc / "docs").iterdir()) == pages
    for name in pages:
        assert (doc / "docs" / name).read_bytes() == (ROOT / "docs" / name).read_bytes()
        assert mode(doc / "docs" / name) == 0o644
    state = root / "var/lib/eslcdr"
    assert state.is_dir() and mode(state) == 0o750


def test_second_install_upgrades_and_keeps_config_tokens_and_data(staged):
    root, _ = staged
    etc = root / "etc/eslcdr"
    ini = etc / "eslcdr.ini"
    ini.write_text(ini.read_text().replace("level = info", "level = debug"))
    (etc / "tokens").write_text("sha256:%s *\n" % ("ab" * 32))
    (etc / "environment").write_text("ESLCDR_ESL_PASSWORD=s3cret\n")
    database = root / "var/lib/eslcdr/cdrs.db"
    database.write_bytes(b"not touched")
    kept = {p: p.read_bytes() for p in (ini, etc / "tokens", etc / "environment", database)}
    # Damage the program: the upgrade must reinstall it.
    notify = next((root / "opt/eslcdr").glob("lib/python*/site-packages/eslcdr/service/notify.py"))
    notify.write_text("raise ImportError('old version')\n")

    second = make("install", root)
    assert "kept %s" % ini in second.stdout
    for path, content in kept.items():
        assert path.read_bytes() == content, path
    assert mode(etc / "tokens") == 0o640 and mode(etc / "environment") == 0o600
    assert notify.read_text() == (ROOT / "eslcdr/service/notify.py").read_text()
    assert (etc / "eslcdr.ini.dist").read_text() == (ROOT / "conf/eslcdr.ini").read_text()


def test_uninstall_removes_program_and_units_keeps_config_and_data(tmp_path_factory, staged):
    # Last in the module: it takes the staged install away.
    root, _ = staged
    result = make("uninstall", root)
    assert not (root / "opt/eslcdr").exists()
    assert not list((root / "etc/systemd/system").glob("*.service"))
    assert not (root / "usr/lib/sysusers.d/eslcdr.conf").exists()
    assert (root / "etc/eslcdr/eslcdr.ini").is_file()
    assert (root / "etc/eslcdr/tokens").is_file()
    assert (root / "var/lib/eslcdr/cdrs.db").is_file()
    assert "kept" in result.stdout


def test_install_refuses_a_prefix_that_uninstall_could_not_safely_remove(tmp_path):
    result = subprocess.run(
        ["sh", str(ROOT / "systemd/install.sh"), "install"],
        env=dict(os.environ, DESTDIR=str(tmp_path), PREFIX="/usr"),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "PREFIX" in result.stderr
    assert not (tmp_path / "usr").exists()

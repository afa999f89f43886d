# Two entry points: `make demo` (the daemon against the built-in FreeSWITCH
# stand-in) and `make test`. Both create the virtualenv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
BROWSER = /usr/bin/chromium /usr/bin/chromedriver
SYSTEMD_ANALYZE = /usr/bin/systemd-analyze
EXAMPLE_TOOLS = /usr/bin/curl /usr/bin/sqlite3

.PHONY: demo test test-fast bench clean install uninstall

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/eslcdr demo

test: $(STAMP) $(BROWSER) $(SYSTEMD_ANALYZE) $(EXAMPLE_TOOLS)
	$(BIN)/python -m pytest

# The unit tests alone: no process, PostgreSQL, browser or deliberately large volume
# (docs/development.md).
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit -m 'not postgres and not subprocess and not browser and not slow'

# The /ui page's test drives Debian's chromium headless through chromedriver:
# installed from Debian when missing, never downloaded at run time.
$(BROWSER):
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver

# The unit's hardening is checked with systemd-analyze (verify, security):
# Debian's systemd package, installed the same way when it is missing.
$(SYSTEMD_ANALYZE):
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y systemd

# The docs' curl and sqlite3 examples run with the real commands (tests/unit/test_docs.py).
$(EXAMPLE_TOOLS):
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y curl sqlite3

# The quick benchmarks (about three minutes: the live regime runs in real
# time, ~35 s per rate); bench/README.md lists the others.
bench: $(STAMP)
	$(BIN)/python bench/ingest.py --repeat 30 --rounds 3
	$(BIN)/python bench/latency.py --cps 600 --seconds 10
	$(BIN)/python bench/live.py --rates 10,50,200

clean:
	rm -rf $(VENV) *.egg-info eslcdr-demo.db*

# The service on a media server (as root): systemd/install.sh does the work
# and documents the variables. `make install PYTHON=/usr/bin/python3`;
# DESTDIR=/some/dir stages every file there (no user, chown or systemctl).
INSTALL_VARS = PYTHON='$(PYTHON)' DESTDIR='$(DESTDIR)' PIP_ARGS='$(PIP_ARGS)' \
	$(if $(PREFIX),PREFIX='$(PREFIX)') $(if $(SYSCONFDIR),SYSCONFDIR='$(SYSCONFDIR)') \
	$(if $(STATEDIR),STATEDIR='$(STATEDIR)') $(if $(UNITDIR),UNITDIR='$(UNITDIR)') \
	$(if $(SYSUSERSDIR),SYSUSERSDIR='$(SYSUSERSDIR)') $(if $(DOCDIR),DOCDIR='$(DOCDIR)')

install:
	$(INSTALL_VARS) sh systemd/install.sh install

uninstall:
	$(INSTALL_VARS) sh systemd/install.sh uninstall

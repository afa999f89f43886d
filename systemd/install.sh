#!/bin/sh
# eslcdr on a media server: `make install` / `make uninstall` run this.
#
#   systemd/install.sh install | uninstall
#
# install   a virtualenv in $PREFIX (/opt/eslcdr) with eslcdr pip-installed
#           into it (not editable; Debian's Python refuses system-wide pip,
#           PEP 668), the config in $SYSCONFDIR (/etc/eslcdr: eslcdr.ini,
#           tokens 0640 root:eslcdr, environment 0600; files already there are
#           never overwritten), every systemd/*.service in $UNITDIR, the
#           sysusers file, the eslcdr system user, $STATEDIR (/var/lib/eslcdr,
#           0750 eslcdr), README.md and docs/ in $DOCDIR, then
#           `systemctl daemon-reload` if systemd runs.
#           Run again, it upgrades the program and keeps config, tokens, data.
# uninstall stops and removes the units and the program; keeps $SYSCONFDIR,
#           $STATEDIR and the eslcdr user (it owns the data).
#
# Variables (environment, or `make install VAR=...`):
#   PYTHON       interpreter the virtualenv is made from (default python3)
#   DESTDIR      staging root prefixed to every path written (tests, inspection).
#                Under DESTDIR nothing outside it is touched: no user is created,
#                no chown (files belong to whoever runs the install; modes are
#                still set), no systemctl.  A virtualenv is not relocatable:
#                the staged one runs from $DESTDIR$PREFIX only.
#   PREFIX SYSCONFDIR STATEDIR UNITDIR SYSUSERSDIR DOCDIR   the locations;
#                the installed unit and eslcdr.ini name PREFIX, SYSCONFDIR and
#                STATEDIR as given (without DESTDIR).
#   PIP_ARGS     extra arguments for pip (e.g. --index-url, --no-index --find-links)
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/eslcdr}
SYSCONFDIR=${SYSCONFDIR:-/etc/eslcdr}
STATEDIR=${STATEDIR:-/var/lib/eslcdr}
UNITDIR=${UNITDIR:-/etc/systemd/system}
SYSUSERSDIR=${SYSUSERSDIR:-/usr/lib/sysusers.d}
DOCDIR=${DOCDIR:-/usr/share/doc/eslcdr}
PIP_ARGS=${PIP_ARGS:-}
SERVICE_USER=eslcdr

say() { printf 'eslcdr: %s\n' "$*"; }
die() { printf 'eslcdr: %s\n' "$*" >&2; exit 1; }
staged() { [ -n "$DESTDIR" ]; }
systemd_running() { ! staged && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

# The shipped files name the default locations; point them at the chosen ones.
render() {
    sed -e "s#/opt/eslcdr#$PREFIX#g" -e "s#/etc/eslcdr#$SYSCONFDIR#g" -e "s#/var/lib/eslcdr#$STATEDIR#g" "$1"
}

# Install a file rendered from $1 to $2 with mode $3, unless $2 exists.
install_once() {
    if [ -e "$2" ]; then
        say "kept $2"
    else
        render "$1" > "$2.tmp.$$" && chmod "$3" "$2.tmp.$$" && mv "$2.tmp.$$" "$2"
        say "created $2"
    fi
}

# Create $1 with the text $3 and mode $2 unless it exists; the mode is set either way.
create_once() {
    if [ -e "$1" ]; then
        say "kept $1"
    else
        printf '%s\n' "$3" > "$1.tmp.$$" && mv "$1.tmp.$$" "$1"
        say "created $1"
    fi
    chmod "$2" "$1"
}

check_prefix() {
    case "$PREFIX" in
        /*eslcdr*) ;;
        *) die "PREFIX=$PREFIX must be an absolute path naming eslcdr (it is removed on uninstall)" ;;
    esac
}

install_program() {
    venv=$DESTDIR$PREFIX
    command -v "$PYTHON" >/dev/null 2>&1 || die "no Python interpreter '$PYTHON' (set PYTHON=)"
    # A virtualenv whose interpreter no longer runs (the system Python was
    # upgraded) is rebuilt; otherwise it is reused and the package upgraded.
    if [ -e "$venv/pyvenv.cfg" ] && ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
        say "rebuilding $venv (its Python no longer runs)"
        rm -rf "$venv"
    fi
    if [ ! -e "$venv/pyvenv.cfg" ]; then
        "$PYTHON" -m venv "$venv" || die "'$PYTHON -m venv' failed (Debian: apt-get install python3-venv)"
        say "created virtualenv $venv ($("$venv/bin/python" -V 2>&1))"
    fi
    # Build from a clean copy: nothing is written into the source tree and no
    # stale build/ output can slip into the wheel.
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    cp -R "$SRC/eslcdr" "$SRC/setup.cfg" "$SRC/pyproject.toml" "$SRC/README.md" "$build/"
    find "$build" -name __pycache__ -prune -exec rm -rf {} +
    # A local folder is always rebuilt and reinstalled (same version or not);
    # --upgrade also brings the pinned dependencies of the new version.
    # shellcheck disable=SC2086 # PIP_ARGS is a list of words
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade $PIP_ARGS "$build" \
        || die "pip install into $venv failed"
    rm -rf "$build"
    trap - EXIT
    say "installed $("$venv/bin/eslcdr" --version) in $venv"
}

create_user() {
    if staged; then
        say "DESTDIR set: not creating the $SERVICE_USER user (the sysusers file is installed)"
        return
    fi
    if id "$SERVICE_USER" >/dev/null 2>&1; then
        return
    fi
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers "$SYSUSERSDIR/eslcdr.conf"
    elif command -v useradd >/dev/null 2>&1; then
        useradd --system --user-group --home-dir "$STATEDIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "eslcdr CDR daemon" "$SERVICE_USER"
    elif command -v adduser >/dev/null 2>&1; then
        adduser --system --group --home "$STATEDIR" --no-create-home "$SERVICE_USER"
    else
        die "cannot create the $SERVICE_USER user: no systemd-sysusers, useradd or adduser"
    fi
    id "$SERVICE_USER" >/dev/null 2>&1 || die "the $SERVICE_USER user was not created"
    say "created system user $SERVICE_USER"
}

# chown unless staged (DESTDIR): files there belong to whoever installs.
owner() {
    staged || chown "$1" "$2"
}

install_config() {
    etc=$DESTDIR$SYSCONFDIR
    mkdir -p "$etc"
    chmod 0755 "$etc"
    for ini in "$SRC"/conf/*.ini; do
        install_once "$ini" "$etc/$(basename "$ini")" 0644
    done
    # The shipped eslcdr.ini of this version, to compare with the kept one.
    render "$SRC/conf/eslcdr.ini" > "$etc/eslcdr.ini.dist"
    chmod 0644 "$etc/eslcdr.ini.dist"
    create_once "$etc/tokens" 0640 "# eslcdr API tokens: one 'TOKEN ACCOUNT_ID' or 'sha256:HEX ACCOUNT_ID' per line ('*' = collector).
# Add one: $PREFIX/bin/eslcdr token add --account '*' -c $SYSCONFDIR/eslcdr.ini"
    # The service reads the tokens through its group; root adds them.
    owner "root:$SERVICE_USER" "$etc/tokens"
    create_once "$etc/environment" 0600 "# Read by systemd (as root) for eslcdr.service: secrets stay out of eslcdr.ini.
#ESLCDR_ESL_PASSWORD=ClueCon"
    owner root:root "$etc/environment"
    # The central API's tokens (eslcdr collect, User=eslcdr): as tokens, so
    # that `eslcdr token add --tokens-file` as root keeps it readable by the service.
    create_once "$etc/collector-tokens" 0640 "# eslcdr collect's API tokens (central host only), the format of tokens.
# Add one: $PREFIX/bin/eslcdr token add --account ACCOUNT_ID --tokens-file $SYSCONFDIR/collector-tokens"
    owner "root:$SERVICE_USER" "$etc/collector-tokens"
    create_once "$etc/collector.environment" 0600 "# Read by systemd (as root) for eslcdr-collect.service, on the central host only.
#ESLCDR_COLLECTOR_DSN=postgresql://eslcdr:secret@localhost/cdrs"
    owner root:root "$etc/collector.environment"
}

install_units() {
    mkdir -p "$DESTDIR$UNITDIR" "$DESTDIR$SYSUSERSDIR" "$DESTDIR$DOCDIR"
    for unit in "$SRC"/systemd/*.service; do
        target=$DESTDIR$UNITDIR/$(basename "$unit")
        render "$unit" > "$target.tmp.$$" && chmod 0644 "$target.tmp.$$" && mv "$target.tmp.$$" "$target"
        say "installed $target"
    done
    render "$SRC/systemd/eslcdr.sysusers" > "$DESTDIR$SYSUSERSDIR/eslcdr.conf"
    chmod 0644 "$DESTDIR$SYSUSERSDIR/eslcdr.conf"
    cp "$SRC/README.md" "$DESTDIR$DOCDIR/README.md"
    chmod 0644 "$DESTDIR$DOCDIR/README.md"
    # The README links the pages of docs/: they go beside it.
    mkdir -p "$DESTDIR$DOCDIR/docs"
    for page in "$SRC"/docs/*; do
        cp "$page" "$DESTDIR$DOCDIR/docs/"
        chmod 0644 "$DESTDIR$DOCDIR/docs/$(basename "$page")"
    done
}

install_state() {
    mkdir -p "$DESTDIR$STATEDIR"
    chmod 0750 "$DESTDIR$STATEDIR"
    owner "$SERVICE_USER:$SERVICE_USER" "$DESTDIR$STATEDIR"
}

do_install() {
    check_prefix
    if ! staged && [ "$(id -u)" != 0 ]; then
        die "make install needs root (or DESTDIR=... to stage into a folder)"
    fi
    install_program
    install_units
    create_user
    install_config
    install_state
    if systemd_running; then
        systemctl daemon-reload
        say "systemd reloaded its units"
        if systemctl is-active --quiet eslcdr.service; then
            say "eslcdr.service is running the previous version: systemctl restart eslcdr"
        fi
    fi
    say "done. Next: edit $SYSCONFDIR/eslcdr.ini (json_cdr_dir), put ESLCDR_ESL_PASSWORD in $SYSCONFDIR/environment,"
    say "  $PREFIX/bin/eslcdr token add --account '*' -c $SYSCONFDIR/eslcdr.ini"
    say "  $PREFIX/bin/eslcdr check -c $SYSCONFDIR/eslcdr.ini && systemctl enable --now eslcdr"
}

do_uninstall() {
    check_prefix
    if ! staged && [ "$(id -u)" != 0 ]; then
        die "make uninstall needs root (or DESTDIR=...)"
    fi
    for unit in "$SRC"/systemd/*.service; do
        name=$(basename "$unit")
        if systemd_running; then
            systemctl disable --now "$name" >/dev/null 2>&1 || true
        fi
        rm -f "$DESTDIR$UNITDIR/$name"
    done
    rm -f "$DESTDIR$SYSUSERSDIR/eslcdr.conf"
    rm -rf "$DESTDIR$DOCDIR"
    if [ -e "$DESTDIR$PREFIX/pyvenv.cfg" ]; then
        rm -rf "$DESTDIR$PREFIX"
        say "removed $DESTDIR$PREFIX"
    fi
    if systemd_running; then
        systemctl daemon-reload
    fi
    say "kept $DESTDIR$SYSCONFDIR (config, tokens) and $DESTDIR$STATEDIR (database) and the $SERVICE_USER user"
}

case "${1:-}" in
    install) do_install ;;
    uninstall) do_uninstall ;;
    *) die "usage: $0 install|uninstall" ;;
esac

"""The ``eslcdr`` command line: a thin layer over the library.

``main`` runs gevent's monkey patching first, before anything imports
sockets or bottle (every command's modules are imported after it, in the
function that runs the command); importing this module patches nothing.
Exit codes: 0 ok, 2 usage or configuration error, 1 other failure.
"""

import argparse
import os
import sys

from . import __version__

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _option(parse):
    """An argparse type checking its text with a config setting's parser: the
    refusal names the option typed (``argument --db: ...``), not the setting
    it fills, before anything is created."""
    from .settings import Invalid

    def check(text: str) -> str:
        try:
            parse(text)
        except Invalid as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return check


def _add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help="config file (default: /etc/eslcdr/eslcdr.ini, then conf/eslcdr.ini)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eslcdr", description="Call detail records from the FreeSWITCH Event Socket.")
    parser.add_argument("--version", action="version", version="eslcdr " + __version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    run = commands.add_parser("run", help="run the daemon")
    _add_config_arg(run)

    from .fakefs.cli import non_negative_float, non_negative_int
    from .settings import file_path, host_port

    demo = commands.add_parser("demo", help="the daemon against the built-in FreeSWITCH stand-in")
    demo.add_argument("--db", default="eslcdr-demo.db", type=_option(file_path("eslcdr-demo.db")), metavar="PATH",
                      help="database file (default: eslcdr-demo.db)")
    demo.add_argument("--listen", default="127.0.0.1:8080", type=_option(host_port), metavar="HOST:PORT",
                      help="API address (default: 127.0.0.1:8080)")
    demo.add_argument("--calls", type=non_negative_int, default=500, help="live calls to generate (default: 500; 0: no end)")
    demo.add_argument("--history", type=non_negative_int, default=2000, metavar="CALLS",
                      help="calls of the past 24 hours, sent first, for the /ui page to show (default: 2000)")
    demo.add_argument("--cps", type=non_negative_float, default=5.0, help="calls per second (default: 5)")
    demo.add_argument("--seed", type=int, help="seed of the generated calls (default: a new one each run, so a"
                      " second run on the same --db records new calls; a seed repeats its calls, Unique-IDs included)")
    demo.add_argument("--duration", type=non_negative_float, default=0,
                      help="stop after this many seconds (default 0: run until Ctrl-C)")
    demo.add_argument("--verbose", action="store_true", help="log at info level instead of the live status line")

    fakefs = commands.add_parser("fakefs", help="the FreeSWITCH stand-in alone")
    from .fakefs import add_arguments as add_fakefs_arguments

    add_fakefs_arguments(fakefs)

    imp = commands.add_parser("import", help="backfill from mod_json_cdr files (idempotent)")
    _add_config_arg(imp)
    imp.add_argument("paths", nargs="+", metavar="PATH", help="json_cdr files or folders")

    token = commands.add_parser("token", help="manage API tokens")
    token_commands = token.add_subparsers(dest="token_command", metavar="ACTION")
    token_commands.required = True
    token_add = token_commands.add_parser("add", help="create a token; only its hash is stored")
    _add_config_arg(token_add)
    token_add.add_argument("--account", required=True, help="account id the token may read ('*' = collector)")
    token_add.add_argument("--tokens-file", metavar="PATH", help="tokens file (default: [api] tokens_file)")

    collect = commands.add_parser("collect", help="pull every media server's CDRs into PostgreSQL")
    collect.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help="collector config (default: /etc/eslcdr/collector.ini, then conf/collector.ini)",
    )

    check = commands.add_parser("check", help="validate the config and try the Event Socket login")
    _add_config_arg(check)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gevent import monkey

    monkey.patch_all()
    from .config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "demo":
            from .service.demo import run_demo

            return run_demo(args)
        if args.command == "fakefs":
            from .fakefs import run as run_fakefs

            return run_fakefs(args)
        if args.command == "import":
            return cmd_import(args)
        if args.command == "token":
            return cmd_token_add(args)
        if args.command == "check":
            return cmd_check(args)
        if args.command == "collect":
            return cmd_collect(args)
    except ConfigError as exc:
        print("eslcdr: config error: %s" % _config_error(exc, args), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    parser.error("unknown command")
    return EXIT_USAGE


def _config_error(exc, args) -> str:
    """``exc``'s message; for a file whose sections are all another command's, which one."""
    from .collector.config import LAYOUT as COLLECTOR
    from .config import LAYOUT as DAEMON, UnknownSection

    if isinstance(exc, UnknownSection):
        other = COLLECTOR if exc.layout is DAEMON else DAEMON
        if all(other.takes(section) for section in exc.sections):
            command = " ".join(filter(None, ("eslcdr", args.command, getattr(args, "token_command", None))))
            return "%s looks like the config of %s (%s): %s for %s, whose config is %s" % (
                exc.source, other.command, other.file, exc, command, exc.layout.file)
    return str(exc)


def _load(args):
    from . import config
    from .service import logs

    cfg = config.load(args.config)
    logs.configure(cfg.log.level, cfg.log.format)
    return cfg


def cmd_run(args) -> int:
    from .service.daemon import Daemon
    from .service.http import serve_api

    import sqlite3

    from .api.tokens import TokenFileError
    from .store.schema import SchemaTooNew

    cfg = _load(args)
    try:
        daemon = Daemon(cfg, api_factory=serve_api)
        daemon.start()
    except (OSError, sqlite3.Error) as exc:
        print("eslcdr: cannot start (database %s, api %s:%d): %s%s" % (
            cfg.store.path, cfg.api.host, cfg.api.port, exc, _low_space(cfg.store.path)), file=sys.stderr)
        return EXIT_FAILURE
    except TokenFileError as exc:
        print("eslcdr: config error: %s" % exc, file=sys.stderr)
        return EXIT_USAGE
    except SchemaTooNew as exc:
        print("eslcdr: cannot start: %s: %s" % (cfg.store.path, exc), file=sys.stderr)
        return EXIT_FAILURE
    return daemon.serve_forever()


LOW_SPACE = 1 << 20  # bytes: below this, a failed start names the free space


def _low_space(db_path: str) -> str:
    """'; its file system has N bytes free' when the database's folder is (nearly)
    full: SQLite then cannot make room for its -shm file and says only 'disk I/O error'."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(db_path)))
    except OSError:
        return ""
    free = st.f_bavail * st.f_frsize
    return "; its file system has %d bytes free" % free if free < LOW_SPACE else ""


def cmd_import(args) -> int:
    from .service.importer import import_paths

    cfg = _load(args)
    result = import_paths(cfg, args.paths)
    print("imported %d new CDRs (%d already present, %d files unreadable)" % (result.new, result.duplicates, result.failed))
    return EXIT_OK if result.failed == 0 else EXIT_FAILURE


def cmd_token_add(args) -> int:
    from .api.tokens import TokenFileError, add_token

    path = args.tokens_file
    if path is None:
        from . import config

        path = config.load(args.config).api.tokens_file
    try:
        token = add_token(path, args.account)
    except OSError as exc:
        print("eslcdr: cannot write %s: %s" % (path, exc.strerror), file=sys.stderr)
        return EXIT_FAILURE
    except TokenFileError as exc:  # a bad --account, or a file the daemon would refuse
        print("eslcdr: token not added: %s" % exc, file=sys.stderr)
        return EXIT_USAGE
    print(token)
    print("token for account %s added to %s (only its sha256 is stored)" % (args.account, path), file=sys.stderr)
    return EXIT_OK


def cmd_collect(args) -> int:
    import psycopg

    from .service import logs
    from .collector import config as collector_config
    from .collector.service import Collector
    from .store.schema import SchemaTooNew

    cfg = collector_config.load(args.config)
    logs.configure(cfg.log.level, cfg.log.format)
    collector = Collector(cfg)
    try:
        collector.start()
    except psycopg.Error as exc:
        # Never print the DSN, nor a piece of its password libpq may name.
        message = cfg.redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        print("eslcdr: cannot start: PostgreSQL: %s" % message, file=sys.stderr)
        return EXIT_FAILURE
    except SchemaTooNew as exc:
        print("eslcdr: cannot start: %s" % exc, file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print("eslcdr: cannot start: listen %s:%d: %s" % (cfg.api.host, cfg.api.port, exc), file=sys.stderr)
        return EXIT_FAILURE
    return collector.serve_forever()


def cmd_check(args) -> int:
    from .esl.client import NodeConnection
    from .esl.errors import RETRYABLE, AuthenticationError

    cfg = _load(args)
    print("config %s: ok" % cfg.source)
    failed = False
    for node in cfg.nodes:
        connection = NodeConnection(node, on_event=lambda event: None, on_resync=lambda alive: None)
        try:
            client = connection.connect_once()
        except AuthenticationError as exc:
            print("node %s (%s:%d): %s" % (node.name, node.host, node.port, exc))
            return EXIT_USAGE
        except RETRYABLE as exc:
            print("node %s (%s:%d): cannot connect: %s" % (node.name, node.host, node.port, exc))
            failed = True
            continue
        known = ", Core-UUID %s" % connection.core_uuid if connection.core_uuid else ""
        print("node %s (%s:%d): login ok%s" % (node.name, node.host, node.port, known))
        client.close()
    tokens = cfg.api.tokens_file
    refused = False
    if not os.path.exists(tokens):
        print("tokens file %s: missing (the API will refuse every request)" % tokens)
    else:
        from .api.tokens import TokenFileError, load_tokens

        try:
            print("tokens file %s: %d tokens" % (tokens, len(load_tokens(tokens))))
        except TokenFileError as exc:  # eslcdr run refuses to start on it
            print("tokens file: %s (eslcdr run refuses to start on it)" % exc)
            refused = True
    if cfg.backfill.json_cdr_dir:
        from .service.json_cdr_dir import folder_problem

        problem = folder_problem(cfg.backfill.json_cdr_dir)
        print("json_cdr_dir %s: %s" % (cfg.backfill.json_cdr_dir, problem or "readable"))
        failed = failed or problem is not None
    if refused:
        return EXIT_USAGE
    return EXIT_FAILURE if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""The README documents every command, option, config key and column."""

from __future__ import annotations

import argparse
from pathlib import Path

from eslcdr.cli import build_parser
from eslcdr.config import DEFAULTS
from eslcdr.schema import COLUMNS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def subcommands(parser: argparse.ArgumentParser, prefix: str = "eslcdr"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subcommands(sub, prefix + " " + name)
            return
    yield prefix, parser


def test_every_command_and_option_documented():
    missing = []
    for command, parser in subcommands(build_parser()):
        if "`" + command not in README:
            missing.append(command)
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option not in ("--help", "--version") and option not in README:
                    missing.append("%s %s" % (command, option))
    assert missing == []


def test_every_config_key_documented():
    missing = ["[%s] %s" % (s, k) for s, keys in DEFAULTS.items() for k in keys if "`%s`" % k not in README]
    assert missing == []


def test_every_column_documented_with_its_description():
    for name, _, description in COLUMNS:
        assert "| `%s` |" % name in README, name
        assert description in README, name


def test_readme_names_the_two_setup_commands():
    assert "make demo" in README and "make test" in README

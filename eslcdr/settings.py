"""How a config file is declared and read: the machinery of ``eslcdr/config.py``'s and
``eslcdr/collector/config.py``'s declarations (docs/configuration.md).

A key is a ``Setting``: its default as the INI file writes it, how its text becomes a
value (``parse``: ``text``, ``file_path``, ``names``, ``choice``, ``host_port``, ``int``...),
its ``Bounds`` (``positive``, ``at_least``..., each saying itself) and its help.  A file's
``Layout`` is the sections it takes.  ``read_config_file`` reads the file, refusing a
malformed line by its number only (it may hold a secret); ``check_sections`` refuses a
section or key the layout does not declare, with what was likely meant; ``section_values``
lays the environment (``env_name``) over the file's text; ``parsed`` turns a section's text
into values.  Every refusal is a ``ConfigError`` naming where the bad text came from (the
key, or the environment variable that set it: ``origin``) and why -- never a secret (exit 2).
"""

from __future__ import annotations

import configparser
import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence


class ConfigError(ValueError):
    """The configuration is invalid; the message names section and key."""


class Invalid(ValueError):
    """Raised by a ``Setting``'s parser: why the text is refused (the error
    reads ``[section] key: <why>``)."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One key of an INI section, declared once."""

    default: str  # as written in the INI file
    # text -> value; a ValueError reads "'x' is not a valid <parse's name>",
    # an Invalid gives its own reason
    parse: Callable[[str], Any]
    check: Bounds | None = None  # valid inside them, else "out of range: <its text>"
    help: str = ""  # what it is for: the comment above the key in conf/eslcdr.ini

    def value(self, values: Mapping[str, str], section: str, key: str) -> Any:
        """``values[key]`` parsed and checked; a refusal names where the text came from (``origin``)."""
        raw = values[key]
        try:
            value = self.parse(raw)
        except Invalid as exc:
            raise ConfigError("%s: %s" % (origin(values, section, key), exc)) from None
        except ValueError:
            where = origin(values, section, key)
            raise ConfigError("%s: %r is not a valid %s" % (where, raw, self.parse.__name__)) from None
        if self.check is not None and not self.check(value):
            raise out_of_range(origin(values, section, key), raw, self.check.text)
        return value


def text(raw: str) -> str:
    return raw.strip()


def file_path(example: str) -> Callable[[str], str]:
    """The parser of a file's path: ``text``, refused when it names a folder (the refusal
    suggests ``example``, a file name, in it)."""

    def parse(raw: str) -> str:
        path = raw.strip()
        if path and os.path.isdir(path):
            raise Invalid("%r is a folder, not a file: name one in it, e.g. %s" % (path, os.path.join(path, example)))
        return path

    return parse


def names(raw: str) -> tuple[str, ...]:
    """Names separated by commas (or lines)."""
    return tuple(part.strip() for part in raw.replace("\n", ",").split(",") if part.strip())


def choice(*options: str) -> Callable[[str], str]:
    """One of ``options`` (case and surrounding blanks ignored)."""
    allowed = ", ".join(options[:-1]) + " or " + options[-1]

    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise Invalid("%r must be %s" % (value, allowed))
        return value

    return parse


def host_port(raw: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6; no host = loopback) -> (host, port)."""
    host, sep, port = raw.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise Invalid("%r is not host:port" % raw)
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass(frozen=True, slots=True)
class Bounds:
    """A value's bounds: ``test`` is true inside them, ``text`` says them to the
    operator (``'0' is out of range: more than 0``)."""

    test: Callable[[Any], bool]
    text: str

    def __call__(self, value: Any) -> bool:
        return self.test(value)


positive = Bounds(lambda value: value > 0, "more than 0")
non_negative = Bounds(lambda value: value >= 0, "0 or more")


def at_least(low: float) -> Bounds:
    """The bounds of a value that must be ``low`` or more."""
    return Bounds(lambda value: value >= low, "at least %s" % low)


def within(low: float, high: float) -> Bounds:
    """The bounds of a value from ``low`` to ``high``, both included."""
    return Bounds(lambda value: low <= value <= high, "%s to %s" % (low, high))


def above(low: float, up_to: float) -> Bounds:
    """The bounds of a value above ``low``, up to ``up_to`` included."""
    return Bounds(lambda value: low < value <= up_to, "more than %s and at most %s" % (low, up_to))


def out_of_range(where: str, raw: str, bounds: str) -> ConfigError:
    return ConfigError("%s: %r is out of range: %s" % (where, raw, bounds))


def defaults(settings: Mapping[str, Mapping[str, Setting]]) -> dict[str, dict[str, str]]:
    """Section -> key -> default, as the INI file writes it."""
    return {section: {key: setting.default for key, setting in keys.items()} for section, keys in settings.items()}


def parsed(settings: Mapping[str, Setting], values: Mapping[str, str], section: str) -> dict[str, Any]:
    """The keys of ``settings`` in a section's ``values``, parsed and checked."""
    return {key: setting.value(values, section, key) for key, setting in settings.items()}


def env_name(section: str, key: str) -> str:
    """The environment variable that overrides ``[section] key``:
    ``ESLCDR_<SECTION>_<KEY>``, upper case, any character but A-Z and 0-9 as
    ``_`` (``[esl:fs-2] host`` -> ``ESLCDR_ESL_FS_2_HOST``)."""
    return re.sub(r"[^A-Z0-9]", "_", "ESLCDR_%s_%s" % (section.upper(), key.upper()))


@dataclass(frozen=True, slots=True)
class Layout:
    """The sections one kind of config file holds: ``[NAME]`` for NAME in ``plain``,
    ``[NAME:...]`` for NAME in ``named``, each with the keys of ``settings[NAME]``."""

    file: str  # its usual name: eslcdr.ini
    command: str  # the command it is the config of
    settings: Mapping[str, Mapping[str, Setting]]
    plain: Collection[str]
    named: Collection[str]

    def takes(self, section: str) -> bool:
        base, colon, _ = section.partition(":")
        return base in self.settings and base in (self.named if colon else self.plain)

    def meant(self, section: str) -> str:
        """What an unknown ``section`` was likely meant to be: `` (did you mean [esl:fs2]?)``, or ""."""
        base, colon, name = section.partition(":")
        for named in self.named:  # [node], [esl-fs2], [ESL fs2]
            if not colon and base.lower() == named and named not in self.plain:
                return " (did you mean [%s:NAME]?)" % named
            if not colon and base[: len(named)].lower() == named and base[len(named): len(named) + 1] in list("-_. "):
                base, colon, name = named, ":", base[len(named) + 1:].strip()
        close = difflib.get_close_matches(base.lower(), [s for s in self.settings if self.takes(s + colon + name)],
                                          n=1, cutoff=0.75)
        return " (did you mean [%s%s%s]?)" % (close[0], colon, name) if close else ""

    def key_meant(self, section: str, key: str) -> str:
        """What an unknown ``key`` of ``section`` was likely meant to be: a key of it
        spelled so (`` (did you mean 'password'?)``), or a key of another section."""
        close = difflib.get_close_matches(key, self.settings[section.partition(":")[0]], n=1, cutoff=0.75)
        if close:
            return " (did you mean %r?)" % close[0]
        homes = ["[%s]" % s if s in self.plain else "[%s:NAME]" % s for s in self.settings if key in self.settings[s]]
        return " (a key of %s)" % " and ".join(homes) if homes else ""


class UnknownSection(ConfigError):
    """A section ``layout`` does not take, in ``source`` (whose ``sections`` are all named:
    the command line tells another kind of file by them)."""

    def __init__(self, section: str, layout: Layout, sections: Sequence[str], source: str) -> None:
        super().__init__("unknown section [%s]%s" % (section, layout.meant(section)))
        self.layout, self.sections, self.source = layout, tuple(sections), source


def check_sections(parser: configparser.ConfigParser, layout: Layout, source: str) -> None:
    """Refuse a section or key ``layout`` does not declare."""
    for section in parser.sections():
        if not layout.takes(section):
            raise UnknownSection(section, layout, parser.sections(), source)
        for key in parser[section]:
            if key not in layout.settings[section.partition(":")[0]]:
                raise ConfigError("[%s] unknown key %r%s" % (section, key, layout.key_meant(section, key)))


class SectionText(dict):
    """A section's text, key -> value, and ``overridden``: for each key an
    environment variable set, how an error names it (``origin``)."""

    def __init__(self, values: Mapping[str, str], overridden: Mapping[str, str]) -> None:
        super().__init__(values)
        self.overridden = dict(overridden)


def section_values(parser: configparser.ConfigParser, section: str, defaults: Mapping[str, str],
                   environ: Mapping[str, str], inherit: Mapping[str, str] | None = None) -> SectionText:
    """A section's text: its ``defaults``, then what it ``inherit``s, then the
    file's keys, then the environment's (``env_name``)."""
    own = parser[section] if parser.has_section(section) else {}
    values = {**defaults, **(inherit or {}), **own}
    overridden = {key: name for key, name in getattr(inherit, "overridden", {}).items() if key not in own}
    for key in defaults:
        if env_name(section, key) in environ:
            values[key] = environ[env_name(section, key)]
            overridden[key] = "%s (overrides [%s] %s)" % (env_name(section, key), section, key)
    return SectionText(values, overridden)


def origin(values: Mapping[str, str], section: str, key: str) -> str:
    """Where ``values[key]`` came from, as an error names it: ``[section] key``, or the
    environment variable that set it (``ESLCDR_API_LISTEN (overrides [api] listen)``)."""
    return getattr(values, "overridden", {}).get(key) or "[%s] %s" % (section, key)


def read_config_file(parser: configparser.ConfigParser, path: str | os.PathLike | None,
                     default_paths: Sequence[Path]) -> str:
    """Read ``path`` (it must exist), or else the first of ``default_paths``
    that exists, into ``parser``; return what was read (``<defaults>`` when
    nothing was).  Shared by ``eslcdr run`` and ``eslcdr collect``."""
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("config file %s %s" % (path, "is not a file" if path.exists() else "does not exist"))
        candidates = [path]
    else:
        candidates = [p for p in default_paths if p.is_file()][:1]
    for candidate in candidates:
        try:
            with open(candidate, encoding="utf-8") as handle:
                parser.read_file(handle)
        except configparser.Error as exc:
            raise ConfigError("%s: %s" % (candidate, _parse_error(exc))) from None
        except UnicodeDecodeError:
            raise ConfigError("%s: not UTF-8 text" % candidate) from None
        except OSError as exc:
            raise ConfigError("cannot read %s: %s" % (candidate, exc.strerror)) from None
        source = str(candidate)
    return source


def _parse_error(exc: configparser.Error) -> str:
    """What is wrong with the file, by line number only: configparser's own
    message quotes the offending line, which may hold a password or token
    (a ``password`` line that lost its ``=``)."""
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return "line %d: a line before the first [section] header" % exc.lineno
    if isinstance(exc, configparser.ParsingError):
        numbers = ", ".join(str(number) for number, _line in exc.errors)
        return "line %s: not a 'key = value' line, a [section] header or a comment" % numbers
    if isinstance(exc, configparser.DuplicateOptionError):
        return "line %s: [%s] %s is set twice" % (exc.lineno, exc.section, exc.option)
    if isinstance(exc, configparser.DuplicateSectionError):
        return "line %s: section [%s] appears twice" % (exc.lineno, exc.section)
    return "not a valid INI file (%s)" % type(exc).__name__



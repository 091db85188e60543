"""Every flag of an ``asgi-p2p`` command is a setting: the command line, ``ASGI_P2P_*``, a TOML file.

The rule, for anyone adding a flag
==================================

A long option added with plain ``add_argument`` to a subcommand's parser (directly,
or in one of its argument groups) becomes a setting automatically; nothing needs to
be registered:

- its **environment variable** is ``ASGI_P2P_`` and the option's long name in
  capitals, ``-`` turned into ``_`` (``--limit-concurrency`` ->
  ``ASGI_P2P_LIMIT_CONCURRENCY``), as uvicorn derives ``UVICORN_*`` from its options;
- its **key in a** ``--config`` **TOML file** is the same name in lower case
  (``limit_concurrency = 8``), for the commands that have ``--config``;
- **precedence**: command line > environment > config file > the flag's default.

Values from the environment or the file go through the flag's own ``type`` and
``choices``, so they are checked exactly like the command line, and an error names the
variable (or the file and key) and the problem.  Kinds of flags:

- ``store_true`` / ``store_false`` / ``store_const`` / ``BooleanOptionalAction``: the
  variable is a boolean (``1 true yes on`` / ``0 false no off``), the TOML value a
  TOML boolean;
- ``append`` and ``nargs="+"``/``"*"``: the variable is a list, separated by whitespace,
  or a JSON array of strings when a value holds spaces (``["Accept: a", "X-A: b"]``); the
  TOML value an array (or one value);
- anything else: one value (TOML: a string or a number).

Positional arguments (``APP``, ``TARGET``), ``--help``, ``--version``, ``keygen --force`` and the options
of nested subcommands are not settings; ``--config`` has a variable
(``ASGI_P2P_CONFIG``) but no file key.  :data:`RENAMED` gives a flag another name
(``--relay`` is ``ASGI_P2P_RELAY_URL``, the name it had before the rule); a flag whose
derived name is a :class:`NetworkConfig` field that means something else must be renamed
there (``proxy --max-connections`` is ``ASGI_P2P_BACKEND_MAX_CONNECTIONS``), so that one
variable never sets two things.
Variables that are not a setting of any command (nor a :class:`NetworkConfig` field,
nor in :data:`EXTRA_VARIABLES`) are reported at start with a close match.

``docs/configuration.md`` lists every setting; ``tests/cli/test_settings.py`` checks the
table against the parsers, so a new flag needs its row there (``python -m
tests.cli.test_settings``, run from the repository's root, prints the rows).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config import ENV_PREFIX, NetworkConfig
from ..errors import InvalidConfiguration

__all__ = [
    "EXTRA_VARIABLES",
    "RENAMED",
    "Resolved",
    "Setting",
    "known_variables",
    "resolve",
    "settings_of",
    "unknown_variables",
]

#: Flags whose setting name is not derived from the long option (option -> name).  Besides
#: ``--relay`` (its name before the rule), flags whose derived name is a :class:`NetworkConfig`
#: field with another meaning: one variable must not set two things.
RENAMED: dict[str, str] = {
    "--relay": "relay_url",
    # proxy: backend (HTTP) connections, not the node's QUIC ``max_connections``
    "--max-connections": "backend_max_connections",
    # gateway: the 502 deadline for reaching a node, not the QUIC handshake's ``connect_timeout``
    "--connect-timeout": "gateway_connect_timeout",
}
#: Options that are never settings (``--force`` overwrites a key file: a destructive
#: confirmation is never taken from the environment or a file).
_NOT_SETTINGS = frozenset({"--help", "--version", "--force"})
#: Settings with a variable but no config-file key.
_NO_FILE_KEY = frozenset({"config"})
#: ``ASGI_P2P_*`` variables read elsewhere (not a flag, not a NetworkConfig field).
EXTRA_VARIABLES: set[str] = set()

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True)
class Setting:
    """One flag of a command as a setting."""

    #: ``limit_concurrency``: the TOML key, and the variable's name after ``ASGI_P2P_`` in lower case
    name: str
    #: ``--limit-concurrency``
    option: str
    action: argparse.Action

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def dest(self) -> str:
        return self.action.dest

    @property
    def kind(self) -> str:
        """``flag`` (boolean), ``list`` or ``value``."""
        a = self.action
        if isinstance(a, argparse.BooleanOptionalAction) or a.nargs == 0:
            return "flag"
        if isinstance(a, argparse._AppendAction) or a.nargs in ("+", "*"):
            return "list"
        return "value"

    @property
    def in_file(self) -> bool:
        return self.name not in _NO_FILE_KEY


def _long_option(action: argparse.Action) -> str | None:
    longs = [o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-")]
    if not longs:
        longs = [o for o in action.option_strings if o.startswith("--")]
    return longs[0] if longs else None


def settings_of(parser: argparse.ArgumentParser) -> dict[str, Setting]:
    """The settings of a (sub)command's parser, by name, in the order the flags were added."""
    out: dict[str, Setting] = {}
    for action in parser._actions:  # argparse has no public list of its actions
        option = _long_option(action)
        if option is None or option in _NOT_SETTINGS or isinstance(action, argparse._SubParsersAction):
            continue
        if action.dest == argparse.SUPPRESS:
            continue
        name = RENAMED.get(option, option[2:].replace("-", "_"))
        out[name] = Setting(name, option, action)
    return out


def known_variables(parsers: Iterable[argparse.ArgumentParser]) -> set[str]:
    """Every ``ASGI_P2P_*`` variable something reads: the settings of ``parsers``, the
    :class:`NetworkConfig` fields and :data:`EXTRA_VARIABLES`."""
    names = {ENV_PREFIX + f.name.upper() for f in fields(NetworkConfig)} | set(EXTRA_VARIABLES)
    for parser in parsers:
        names.update(s.env for s in settings_of(parser).values())
    return names


def unknown_variables(environ: Mapping[str, str], known: set[str]) -> list[str]:
    """One warning per ``ASGI_P2P_*`` variable nobody reads (a typo, or a setting that does not exist)."""
    out = []
    for var in sorted(v for v in environ if v.startswith(ENV_PREFIX) and v not in known):
        close = difflib.get_close_matches(var, sorted(known), n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        out.append(f"unknown variable {var} is ignored{hint}")
    return out


# -- converting values ---------------------------------------------------------------


def _convert(setting: Setting, text: str, where: str) -> Any:
    """One value through the flag's type and choices (``where`` names its source in errors)."""
    action = setting.action
    try:
        value: Any = action.type(text) if callable(action.type) else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        detail = str(exc) or f"invalid {getattr(action.type, '__name__', 'value')}"
        if isinstance(exc, ValueError) and not isinstance(exc, InvalidConfiguration) and action.type in (int, float):
            detail = f"expected a {action.type.__name__}, got {text!r}"
        raise InvalidConfiguration(f"{where}: {detail}", setting=setting.name) from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise InvalidConfiguration(f"{where}: must be one of {choices}, got {text!r}", setting=setting.name)
    return value


def _flag_value(setting: Setting, on: bool) -> Any:
    action = setting.action
    if isinstance(action, argparse.BooleanOptionalAction):
        return on
    if isinstance(action, argparse._CountAction):
        return 1 if on else action.default
    return action.const if on else action.default


def _from_env(setting: Setting, raw: str) -> Any:
    where = f"{setting.env}={raw!r}"
    kind = setting.kind
    if kind == "flag":
        word = raw.strip().lower()
        if word not in _TRUE and word not in _FALSE:
            raise InvalidConfiguration(
                f"{where}: expected a boolean (1, true, yes, on or 0, false, no, off)", setting=setting.name
            )
        return _flag_value(setting, word in _TRUE)
    if kind == "list":
        text = raw.strip()
        items: list[str]
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InvalidConfiguration(f"{where}: not a JSON array: {exc.msg}", setting=setting.name) from None
            if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
                raise InvalidConfiguration(f"{where}: expected a JSON array of strings", setting=setting.name)
            items = parsed
        else:
            items = text.split()
        return [_convert(setting, item, where) for item in items]
    return _convert(setting, raw.strip(), where)


def _toml_scalar(setting: Setting, value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidConfiguration(
            f"{where}: expected a string or a number, got {_toml_type(value)}", setting=setting.name
        )
    return str(value)


def _toml_type(value: Any) -> str:
    return {bool: "a boolean", list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _from_file(setting: Setting, value: Any, path: Path) -> Any:
    where = f"{path}: {setting.name}"
    kind = setting.kind
    if kind == "flag":
        if not isinstance(value, bool):
            raise InvalidConfiguration(
                f"{where}: expected true or false, got {_toml_type(value)} {value!r}", setting=setting.name
            )
        return _flag_value(setting, value)
    if kind == "list":
        items = value if isinstance(value, list) else [value]
        return [_convert(setting, _toml_scalar(setting, item, where), where) for item in items]
    return _convert(setting, _toml_scalar(setting, value, where), where)


def read_config_file(path: Path, settings: Mapping[str, Setting]) -> dict[str, Any]:
    """The TOML file's values by setting name (flags converted; NetworkConfig fields as they are).

    Raises :class:`InvalidConfiguration` naming the file, the key and the problem.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidConfiguration(f"cannot read --config {path}: {exc.strerror or exc}", setting="config") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidConfiguration(f"{path}: not valid TOML: {exc}", setting="config") from None
    network = {f.name for f in fields(NetworkConfig)}
    keys = sorted({n for n, s in settings.items() if s.in_file} | network)
    out: dict[str, Any] = {}
    for key, value in data.items():
        setting = settings.get(key)
        if setting is not None and setting.in_file:
            out[key] = _from_file(setting, value, path)
        elif key in network:
            from ..config import LIMITS

            LIMITS[key].check(key, value, where=f"{path}: ")
            out[key] = value
        else:
            close = difflib.get_close_matches(key, keys, n=1, cutoff=0.75)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            what = "a table" if isinstance(value, dict) else "a setting"
            raise InvalidConfiguration(f"{path}: unknown key {key!r}: not {what} of this command{hint}", setting=key)
    return out


# -- resolving --------------------------------------------------------------------------


class _Recorder(argparse.Namespace):
    """A namespace that remembers which attributes parsing set: the flags on the command line."""

    asgi_p2p_given: set[str]

    def __init__(self, dests: Iterable[str]) -> None:
        for dest in dests:
            object.__setattr__(self, dest, None)
        object.__setattr__(self, "asgi_p2p_given", set())

    def __setattr__(self, name: str, value: Any) -> None:
        self.asgi_p2p_given.add(name)
        object.__setattr__(self, name, value)


def given_on_command_line(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[set[str], argparse.Namespace]:
    """The dests the command line sets (argparse's own errors exit as usual) and the parse."""
    rec = _Recorder(a.dest for a in parser._actions if a.dest != argparse.SUPPRESS)
    parser.parse_args(list(argv), namespace=rec)
    given: set[str] = rec.asgi_p2p_given
    return set(given), rec


@dataclass
class Resolved:
    """Where each setting's value came from, for a command."""

    #: dest -> value from the environment or the file (the parser's new defaults)
    defaults: dict[str, Any] = field(default_factory=dict)
    #: setting name -> "command line", "$ASGI_P2P_X", "FILE" (only settings not at their default)
    sources: dict[str, str] = field(default_factory=dict)
    #: NetworkConfig fields from the config file not overridden by the environment
    network: dict[str, Any] = field(default_factory=dict)
    #: the config file read, if any
    config_file: Path | None = None


def resolve(parser: argparse.ArgumentParser, argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Resolved:
    """Layer the environment and ``--config`` under the command line ``argv`` of ``parser``.

    Returns the values the parser's defaults must become (``parser.set_defaults(**r.defaults)``)
    so that a flag on the command line still wins.  Raises :class:`InvalidConfiguration`.
    """
    env = os.environ if environ is None else environ
    settings = settings_of(parser)
    given, parsed = given_on_command_line(parser, argv)
    by_dest: dict[str, list[Setting]] = {}
    for s in settings.values():
        by_dest.setdefault(s.dest, []).append(s)

    from_env: dict[str, tuple[Setting, Any]] = {}
    for s in settings.values():
        raw = env.get(s.env)
        if raw is not None:
            from_env[s.name] = (s, _from_env(s, raw))

    out = Resolved()
    config_path: Path | None = None
    if "config" in settings:
        cfg = settings["config"]
        if cfg.dest in given:
            config_path = getattr(parsed, cfg.dest)
        elif "config" in from_env:
            config_path = from_env["config"][1]
    from_file: dict[str, tuple[Setting | None, Any]] = {}
    if config_path is not None:
        out.config_file = Path(config_path)
        for name, value in read_config_file(out.config_file, settings).items():
            from_file[name] = (settings.get(name), value)

    file_layer: dict[str, Any] = {}
    for name, (file_setting, value) in from_file.items():
        if file_setting is None:  # a NetworkConfig field: below the environment's variable for it
            if ENV_PREFIX + name.upper() not in env:
                out.network[name] = value
            continue
        file_layer[name] = value
    env_layer = {name: value for name, (_, value) in from_env.items()}

    groups = [{a.dest for a in g._group_actions} for g in parser._mutually_exclusive_groups]
    chosen: dict[str, tuple[int, str, Any]] = {}  # name -> (layer, source, value)
    for layer, (source, values) in enumerate(((str(out.config_file), file_layer), ("env", env_layer))):
        for name, value in values.items():
            s = settings[name]
            if s.dest in given:
                continue  # the command line wins
            if s.kind == "flag" and value == s.action.default:
                chosen.pop(name, None)  # "off" overrides a lower layer's "on" but excludes nothing
                continue
            label = s.env if source == "env" else f"{source}: {name}"
            group = next((g for g in groups if s.dest in g), None)
            if group is not None:
                if group & given:
                    continue  # the command line chose another member of the group
                for other, (other_layer, other_label, _) in list(chosen.items()):
                    if settings[other].dest not in group or other == name:
                        continue
                    if other_layer == layer:
                        raise InvalidConfiguration(f"{other_label} and {label} cannot both be set", setting=name)
                    del chosen[other]  # a higher layer's choice replaces it
            chosen[name] = (layer, label, value)
    for name, (_, label, value) in chosen.items():
        out.defaults[settings[name].dest] = value
        out.sources[name] = label
    for s in settings.values():
        if s.dest in given:
            out.sources[s.name] = "command line"
    return out


def apply(parser: argparse.ArgumentParser, resolved: Resolved) -> None:
    """Make the resolved values the parser's defaults (the command line still wins)."""
    if resolved.defaults:
        parser.set_defaults(**resolved.defaults)


def reloader(
    parser: argparse.ArgumentParser, argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> Callable[[], tuple[argparse.Namespace, Resolved]]:
    """A function that resolves the settings again (re-reading the config file): for SIGHUP."""
    defaults = {
        a.dest: a.default for a in parser._actions if a.dest != argparse.SUPPRESS and a.default != argparse.SUPPRESS
    }

    def again() -> tuple[argparse.Namespace, Resolved]:
        parser.set_defaults(**defaults)
        resolved = resolve(parser, argv, environ)
        apply(parser, resolved)
        args = parser.parse_args(list(argv))
        return args, resolved

    return again


# -- the table in docs/configuration.md -------------------------------------------------------

#: How the table names what a flag's ``type`` accepts.
_TYPE_RANGES = {
    "positive_int": "whole number >= 1",
    "positive_float": "number > 0 (finite)",
    "seconds_or_off": "0 (off) or seconds > 0 (finite)",
    "port_number": "0..65535",
    "host_port": "HOST:PORT",
    "Path": "path",
    "PosixPath": "path",
    "int": "whole number",
    "float": "number",
    "str": "text",
}


def _range_text(s: Setting) -> str:
    if s.kind == "flag":
        return "true / false"
    action = s.action
    if action.choices is not None:
        one = " \\| ".join(map(str, action.choices))
    else:
        range_text = getattr(action.type, "range_text", None)  # a type that knows its range (cli._ops)
        if callable(range_text):
            one = str(range_text())
        else:
            name = getattr(action.type, "__name__", "str") if action.type is not None else "str"
            one = _TYPE_RANGES.get(name, "text")
    return f"list of {one}" if s.kind == "list" else one


def _default_text(s: Setting) -> str:
    d = s.action.default
    if s.kind == "flag":
        return "false" if not d else "true"
    if d is None or d == [] or d == "":
        return "-"
    return f"`{d}`"


def _help_text(s: Setting) -> str:
    from ._common import default_key_file

    text = " ".join(str(s.action.help or "").split()).replace("%%", "%")
    text = text.replace(str(default_key_file()), "USER_CONFIG_DIR/asgi-p2p/node.key")  # the same on every machine
    return text.replace("|", "\\|")


def _split_clauses(text: str) -> list[str]:
    """``text`` split at each ``"; "`` outside parentheses."""
    clauses, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and text.startswith("; ", i):
            clauses.append(text[start:i])
            start = i + 2
    return [*clauses, text[start:]]


def _without_default(text: str) -> str:
    """``text`` without its closing ``(default: X)`` (or the ``; default: X`` ending its parenthesis)."""
    text = re.sub(r"\s*\(default:? [^()]*\)$", "", text)
    return re.sub(r";\s*default:? [^();]*\)$", ")", text)


def _meaning(helps: Mapping[str, str], defaults_differ: bool) -> str:
    """The meaning column: the help text, or (when commands differ) each command's, with what all share
    said once; a default is left to the default column when it differs between commands."""
    if defaults_differ:
        helps = {c: _without_default(h) for c, h in helps.items()}
    texts = list(dict.fromkeys(helps.values()))
    if len(texts) == 1:
        return texts[0]
    split = [_split_clauses(t) for t in texts]
    n = 0  # the closing clauses every command's text has
    while all(len(c) > n + 1 for c in split) and len({c[-n - 1] for c in split}) == 1:
        n += 1
    parts = []
    for text, clauses in zip(texts, split, strict=True):
        commands = ", ".join(c for c, h in helps.items() if h == text)
        parts.append(f"*{commands}*: {'; '.join(clauses[: len(clauses) - n])}")
    if n:
        parts.append(f"*all*: {'; '.join(split[0][-n:])}")
    return "<br>".join(parts)


def table_rows(parsers: Mapping[str, argparse.ArgumentParser]) -> list[str]:
    """The rows of docs/configuration.md's table of command settings (one per setting name)."""
    rows: dict[str, dict[str, Any]] = {}
    for command, parser in parsers.items():
        for name, s in settings_of(parser).items():
            row = rows.setdefault(name, {"setting": s, "commands": [], "defaults": {}, "helps": {}, "file": False})
            row["commands"].append(command)
            row["defaults"][command] = _default_text(s)
            row["helps"][command] = _help_text(s)
            row["file"] = row["file"] or (s.in_file and "config" in settings_of(parser))
    out = []
    for name in sorted(rows, key=lambda n: (rows[n]["setting"].option, n)):  # by flag, as a reader looks it up
        row = rows[name]
        s = row["setting"]
        defaults = set(row["defaults"].values())
        default = (
            next(iter(defaults)) if len(defaults) == 1 else "; ".join(f"{c}: {d}" for c, d in row["defaults"].items())
        )
        key = f"`{name}`" if row["file"] else "-"
        out.append(
            f"| `{s.option}` | `{s.env}` | {key} | {', '.join(row['commands'])} | {default} | {_range_text(s)} "
            f"| {_meaning(row['helps'], len(defaults) > 1)} |"
        )
    return out

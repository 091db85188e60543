"""The ``asgi-p2p`` command.

``asgi-p2p APP`` serves an ASGI app (like ``uvicorn APP``); the other
subcommands are ``keygen``, ``id``, ``get``, ``proxy``, ``send``, ``receive``, ``gateway``,
``relay``, ``status``, ``invite``, ``pair`` and ``peers``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import P2PError
from ..identity import SecretKey, load_or_create_key
from . import _common, settings
from ._common import Subcommand, default_key_file

__all__ = ["all_parsers", "build_parser", "default_key_file", "main", "version_text"]


def _add_key_file(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--key-file",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"secret key file (default: {default_key_file()})",
    )


def cmd_keygen(args: argparse.Namespace) -> int:
    path: Path = args.key_file or default_key_file()
    key = SecretKey.generate()
    key.save(path, overwrite=args.force)
    print(f"wrote {path}", file=sys.stderr)
    print(key.node_id)
    return 0


def cmd_id(args: argparse.Namespace) -> int:
    path: Path = args.key_file or default_key_file()
    key = SecretKey.load(path) if args.key_file else load_or_create_key(path)
    print(key.node_id)
    return 0


def _subcommands() -> dict[str, Subcommand]:
    """Every ``asgi-p2p`` subcommand: (help, function adding its arguments, function running it).

    Settings rule (see :mod:`asgi_p2p.cli.settings`): each long option a subcommand adds
    with plain ``add_argument`` is automatically ``ASGI_P2P_<OPTION>`` too, and a key of its
    ``--config`` TOML file if it has one (``_common.add_config_arg``); precedence flag >
    variable > file > default.  Add the flag's row to docs/configuration.md
    (``python -m tests.cli.test_settings`` prints the rows; a test compares them).
    """

    def keygen_args(p: argparse.ArgumentParser) -> None:
        _add_key_file(p)
        p.add_argument("--force", action="store_true", help="overwrite an existing key file")

    cmds: dict[str, Subcommand] = {
        "keygen": ("create a new secret key file (mode 0600) and print its node id", keygen_args, cmd_keygen),
        "id": ("print the node id of a key file", _add_key_file, cmd_id),
    }
    try:
        serve = importlib.import_module("asgi_p2p.cli.serve")
    except ImportError:  # pragma: no cover - http layer not built
        pass
    else:
        cmds.update(serve.subcommands())
        from . import gateway, proxy, transfer

        cmds.update(proxy.subcommands())
        cmds.update(transfer.subcommands())
        cmds.update(gateway.subcommands())
    from . import ops, relay  # the relay and the admin commands need no HTTP layer

    cmds.update(relay.subcommands())
    cmds.update(ops.subcommands())
    return cmds


def version_text() -> str:
    """``asgi-p2p 0.1.0 (aioquic 1.7.2, CPython 3.11.7 on Linux)``."""
    import importlib.metadata
    import platform

    try:
        version = importlib.metadata.version("asgi-p2p")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout without `pip install -e .`
        version = "(not installed)"
    try:
        aioquic = importlib.metadata.version("aioquic")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a dependency
        aioquic = "?"
    python = f"{platform.python_implementation()} {platform.python_version()}"
    return f"asgi-p2p {version} (aioquic {aioquic}, {python} on {platform.system()})"


def build_parser(
    cmds: dict[str, Subcommand],
) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``asgi-p2p`` parser and each subcommand's.

    Every long option a subcommand adds (with plain ``add_argument``) is also a setting:
    ``ASGI_P2P_<OPTION>`` and, with ``--config``, a TOML key; see :mod:`asgi_p2p.cli.settings`
    for the rule, and add the flag's row to docs/configuration.md (a test compares them).
    """
    parser = argparse.ArgumentParser(
        prog="asgi-p2p",
        description="Serve ASGI apps to peers over HTTP/3 on direct QUIC; reach peers by node id.",
        epilog="Serve an app with `asgi-p2p module:app` (see `asgi-p2p serve --help`). Every flag can also be "
        "set as an ASGI_P2P_* variable (--limit-concurrency: ASGI_P2P_LIMIT_CONCURRENCY).",
    )
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subs: dict[str, argparse.ArgumentParser] = {}
    for name, (help_text, add_args, _run) in cmds.items():
        subs[name] = sub.add_parser(name, help=help_text, description=help_text)
        add_args(subs[name])
    return parser, subs


def all_parsers() -> dict[str, argparse.ArgumentParser]:
    """Each subcommand's parser, by name (for docs and tests)."""
    return build_parser(_subcommands())[1]


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    cmds = _subcommands()
    parser, subs = build_parser(cmds)
    # `asgi-p2p [OPTIONS] module:app ...` is `asgi-p2p serve [OPTIONS] module:app ...` (as with uvicorn)
    if args_list and args_list[0] not in cmds and args_list[0] not in ("-h", "--help", "--version") and "serve" in cmds:
        args_list.insert(0, "serve")
    reload_settings = None
    resolved = None
    if args_list and args_list[0] in subs:
        command_parser, command_argv = subs[args_list[0]], args_list[1:]
        try:
            _load_env_file(command_parser, command_argv)
            reload_settings = settings.reloader(command_parser, command_argv)
            resolved = settings.resolve(command_parser, command_argv)
        except P2PError as exc:
            print(f"asgi-p2p: error: {exc}", file=sys.stderr)
            return 2
        settings.apply(command_parser, resolved)
        warnings = settings.unknown_variables(os.environ, settings.known_variables(subs.values()))
        if warnings and "log_level" in settings.settings_of(command_parser):
            _common.PENDING_WARNINGS.extend(warnings)  # logged once the command configured logging
        else:
            for warning in warnings:
                print(f"asgi-p2p: warning: {warning}", file=sys.stderr)
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 2
    args.settings = resolved
    args.argv = args_list  # the command line as given (``serve --reload`` restarts it)
    args.reload_settings = reload_settings
    try:
        return cmds[args.command][2](args)
    except P2PError as exc:
        print(f"asgi-p2p: error: {_with_source(str(exc), resolved)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _with_source(message: str, resolved: settings.Resolved | None) -> str:
    """Add where a flag named in an error came from, when not the command line (``(from ASGI_P2P_ALLOW)``)."""
    if resolved is None:
        return message
    sources = []
    for option in dict.fromkeys(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", message)):
        name = settings.RENAMED.get(option, option[2:].replace("-", "_"))
        source = resolved.sources.get(name)
        if source is not None and source != "command line":
            sources.append(f"{option} from {source}")
    return f"{message} ({'; '.join(sources)})" if sources else message


def _load_env_file(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """``--env-file`` (or ``$ASGI_P2P_ENV_FILE``) into ``os.environ`` first, so its variables are settings too."""
    if "env_file" not in settings.settings_of(parser):
        return
    given, parsed = settings.given_on_command_line(parser, argv)
    path = parsed.env_file if "env_file" in given else os.environ.get("ASGI_P2P_ENV_FILE")
    if path:
        _common.load_env_file(Path(path))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``asgi-p2p`` command.

``asgi-p2p APP`` serves an ASGI app (like ``uvicorn APP``); the other
subcommands are ``keygen``, ``id``, ``get``, ``relay``, ``status``, ``invite``,
``pair`` and ``peers``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import P2PError
from ..identity import SecretKey, load_or_create_key
from ._common import Subcommand, default_key_file

__all__ = ["default_key_file", "main"]


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
    from . import ops, relay  # the relay and the admin commands need no HTTP layer

    cmds.update(relay.subcommands())
    cmds.update(ops.subcommands())
    return cmds


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    cmds = _subcommands()
    parser = argparse.ArgumentParser(
        prog="asgi-p2p",
        description="Serve ASGI apps to peers over HTTP/3 on direct QUIC; reach peers by node id.",
        epilog="Serve an app with `asgi-p2p module:app` (see `asgi-p2p serve --help`).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_args, _run) in cmds.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    # `asgi-p2p [OPTIONS] module:app ...` is `asgi-p2p serve [OPTIONS] module:app ...` (as with uvicorn)
    if args_list and args_list[0] not in cmds and args_list[0] not in ("-h", "--help") and "serve" in cmds:
        args_list.insert(0, "serve")
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return cmds[args.command][2](args)
    except P2PError as exc:
        print(f"asgi-p2p: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``asgi-p2p status``, ``invite``, ``pair`` and ``peers``; the admin socket of ``serve`` and ``relay``.

``status``, ``invite`` and ``peers`` talk to a running node through its admin socket
(a unix socket only the node's user may use, see :mod:`asgi_p2p.ops.admin`); ``pair``
runs on the new device and talks to the node over QUIC.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import json
import logging
import re
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidConfiguration, P2PError
from . import _common
from ._common import default_key_file

if TYPE_CHECKING:
    from ..endpoint import Endpoint
    from ..identity import NodeAddr, NodeId, SecretKey
    from ..ops.allowfile import AllowList
    from ..ops.control import NodeControl
    from ..ops.pairing import Invite

__all__ = ["add_admin_args", "admin_socket_path", "parse_duration", "start_admin", "subcommands"]

log = logging.getLogger("asgi_p2p.cli")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``2h``, ``7d`` -> seconds."""
    m = _DURATION.match(text.lower())
    if m is None:
        raise argparse.ArgumentTypeError(f"expected a duration like 90s, 10m, 2h or 7d, got {text!r}")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def subcommands() -> dict[str, _common.Subcommand]:
    """The commands this module adds to ``asgi-p2p`` (consumed by :func:`asgi_p2p.cli.main`)."""
    return {
        "status": ("show a running node: peers, paths, relay, listeners", _status_args, run_status),
        "invite": ("make a one-time invite for pairing a new device (asks the running node)", _invite_args, run_invite),
        "pair": ("pair this device with a node using its invite", _pair_args, run_pair),
        "peers": ("list the running node's allowed peers; `peers revoke ID` removes one", _peers_args, run_peers),
    }


# -- the serving side ------------------------------------------------------------------


def add_admin_args(p: argparse.ArgumentParser) -> None:
    """``--admin-socket PATH`` and ``--no-admin-socket`` (``serve`` and ``relay``)."""
    # the default is named, not computed: help text (and the settings table made from it) is the same everywhere
    p.add_argument(
        "--admin-socket",
        type=Path,
        metavar="PATH",
        help="unix socket for `asgi-p2p status`, `invite` and `peers` (mode 0600; default: "
        "$XDG_RUNTIME_DIR/asgi-p2p/NODE_ID.sock)",
    )
    p.add_argument("--no-admin-socket", action="store_true", help="open no admin socket")


async def start_admin(args: argparse.Namespace, endpoint: Endpoint, allow: AllowList | None) -> NodeControl | None:
    """Open the admin socket of ``endpoint`` (None with ``--no-admin-socket``); close it with ``.close()``."""
    from ..ops.admin import AdminError, AdminServer, default_admin_dir
    from ..ops.control import NodeControl

    if args.no_admin_socket:
        return None
    if not hasattr(asyncio, "start_unix_server"):  # Windows: asyncio serves no unix sockets
        log.warning("no admin socket on this platform: `asgi-p2p status`, `invite` and `peers` cannot reach this node")
        return None
    path = args.admin_socket or default_admin_dir() / f"{endpoint.node_id}.sock"
    try:
        admin = AdminServer(path)
        await admin.start()
    except (AdminError, InvalidConfiguration) as exc:
        if args.admin_socket is not None:
            raise
        # the default place is unusable (e.g. another process with this key runs here): serve without one
        log.warning("this node opens no admin socket: %s", exc)
        return None
    return NodeControl(endpoint, admin, allow)


def admin_socket_path(args: argparse.Namespace) -> Path:
    """The socket to ask: ``--admin-socket``, or the one running node in the default directory."""
    from ..ops.admin import AdminError, default_admin_dir, find_admin_sockets

    if args.admin_socket is not None:
        return Path(args.admin_socket)
    directory = default_admin_dir()
    found = [p for p in find_admin_sockets(directory) if _answers(p)]  # not the stale ones of killed nodes
    if args.node:
        found = [p for p in found if p.stem.startswith(args.node)]
    if not found:
        raise AdminError(
            f"no running asgi-p2p node found in {directory} (start one with `asgi-p2p serve`, "
            "or pass --admin-socket PATH)"
        )
    if len(found) > 1:
        names = ", ".join(p.stem for p in found)
        raise AdminError(f"{len(found)} nodes run here ({names}); choose one with --node ID or --admin-socket PATH")
    return found[0]


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--admin-socket", type=Path, metavar="PATH", help="the node's admin socket")
    p.add_argument(
        "--node", metavar="ID", help="when several nodes run as this user: the one whose node id starts with ID"
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def _call(args: argparse.Namespace, command: str, **params: Any) -> Any:
    from ..ops.admin import admin_call

    return asyncio.run(admin_call(admin_socket_path(args), command, **params))


# -- status ------------------------------------------------------------------------------


def _status_args(p: argparse.ArgumentParser) -> None:
    _client_args(p)


def run_status(args: argparse.Namespace) -> int:
    from ..ops.status import format_status

    status = _call(args, "status")
    now = datetime.datetime.now(datetime.UTC)  # wall-clock ok: the CLI shows 'since' as a UTC time
    for row in status.get("peers", []) + status.get("relay_connections", []):
        seconds = row.get("connected_seconds")
        if seconds is not None:
            since = now - datetime.timedelta(seconds=seconds)
            row["since"] = since.isoformat(timespec="seconds").replace("+00:00", "Z")
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_status(status))
        if status.get("allow"):
            print(f"allowed    {status['allow']}")
    return 0


# -- invite --------------------------------------------------------------------------------


def _invite_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--uses", type=_common.positive_int, default=1, metavar="N", help="devices it may pair (default 1)")
    p.add_argument(
        "--expires",
        type=parse_duration,
        default=600.0,
        metavar="DURATION",
        help="how long it stays valid, e.g. 90s, 10m, 2h (default: 10m)",
    )
    p.add_argument("--label", metavar="NAME", help="label for the paired device in the allow-file (e.g. phone)")
    manage = p.add_mutually_exclusive_group()
    manage.add_argument("--list", action="store_true", help="list the pending invites instead")
    manage.add_argument("--cancel", metavar="ID", help="cancel the pending invite with this id instead")
    _client_args(p)


def run_invite(args: argparse.Namespace) -> int:
    from ..ops.status import format_duration

    if args.list:
        pending = _call(args, "invites")
        if args.json:
            print(json.dumps(pending, indent=2))
            return 0
        print(f"{len(pending)} pending invite(s)")
        for i in pending:
            label = f"  # {i['label']}" if i.get("label") else ""
            left = format_duration(i["expires_in"])
            print(f"{i['id']}  {i['uses_left']}/{i['uses']} use(s) left, expires in {left}{label}")
        return 0
    if args.cancel is not None:
        result = _call(args, "cancel-invite", id=args.cancel)
        print(json.dumps(result, indent=2) if args.json else f"cancelled invite {result['id']}")
        return 0
    result = _call(args, "invite", uses=args.uses, expires=args.expires, label=args.label)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    uses = "once" if result["uses"] == 1 else f"{result['uses']} times"
    print(
        f"invite {result['id']} for node {result['node_id']} (usable {uses}, expires in {_human(result['expires'])})",
        file=sys.stderr,
    )
    print("on the new device run:  asgi-p2p pair INVITE", file=sys.stderr)
    print(result["invite"])
    return 0


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:.0f}s"


# -- pair ------------------------------------------------------------------------------------


def _pair_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("invite", metavar="INVITE", help="the invite (p2pinvite1...) printed by `asgi-p2p invite`")
    p.add_argument(
        "--key-file",
        type=Path,
        metavar="PATH",
        help=f"this device's key, created 0600 if missing (default: {default_key_file()}); "
        "use the same key afterwards (asgi-p2p get --key-file)",
    )
    p.add_argument(
        "--timeout",
        type=_common.positive_float,
        default=15.0,
        metavar="SECONDS",
        help="give up when the node has not answered within this (default 15)",
    )
    p.add_argument(
        "--log-level", choices=list(_common.LOG_LEVELS), default="warning", help="log level (default: warning)"
    )


def _bind_host(addr: NodeAddr) -> str:
    hosts = [h for h, _ in addr.direct_addresses]
    if addr.relay_url is not None or not hosts:
        return "0.0.0.0"
    for host in hosts:
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return "0.0.0.0"
        except ValueError:
            return "0.0.0.0"
    return "127.0.0.1"


def run_pair(args: argparse.Namespace) -> int:
    from ..identity import load_or_create_key
    from ..ops.pairing import Invite

    _common.configure_logging(args.log_level)
    invite = Invite.parse(args.invite)
    key_path: Path = args.key_file or default_key_file()
    key = load_or_create_key(key_path)
    label = asyncio.run(_pair(key, invite, args.timeout))
    from ..ticket import Ticket

    node: NodeId = invite.node_addr.node_id
    named = f" as {label!r}" if label else ""
    print(f"paired: node {node} now allows this device ({key.node_id}){named}", file=sys.stderr)
    print(f"  fetch with:  asgi-p2p get --key-file {key_path} TICKET/", file=sys.stderr)
    print(Ticket.from_node_addr(invite.node_addr).encode())
    return 0


async def _pair(key: SecretKey, invite: Invite, timeout: float) -> str | None:
    from ..config import NetworkConfig
    from ..node import Node
    from ..ops.pairing import pair

    base = NetworkConfig.from_env()
    config = base.replace(connect_timeout=min(base.connect_timeout, timeout))
    addr = invite.node_addr
    node = await Node.bind(key, host=_bind_host(addr), port=0, config=config, relay_url=addr.relay_url)
    try:
        return await pair(node, invite, timeout=timeout)
    except TimeoutError:
        raise P2PError(f"no answer from node {addr.node_id} within {timeout:g} s") from None
    finally:
        await node.close()


# -- peers -------------------------------------------------------------------------------------


def _peers_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=["list", "revoke"], default="list", help="list (default) or revoke")
    p.add_argument("node_id", nargs="?", metavar="ID", help="with revoke: the node id to remove")
    _client_args(p)


def run_peers(args: argparse.Namespace) -> int:
    if args.action == "revoke":
        if not args.node_id:
            raise InvalidConfiguration("peers revoke needs the node id to remove")
        result = _call(args, "revoke", node_id=args.node_id)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            label = f" ({result['label']})" if result.get("label") else ""
            print(
                f"revoked {result['node_id']}{label}: removed from the allow-file, "
                f"{result['closed_connections']} live connection(s) closed"
            )
        return 0
    if args.node_id:
        raise InvalidConfiguration(f"unexpected {args.node_id!r}: did you mean `peers revoke {args.node_id}`?")
    result = _call(args, "peers")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if result["any_node"]:
        print("this node allows any node (no --allow / --allow-file)")
        return 0
    peers = result["peers"]
    print(f"{len(peers)} allowed node(s){' in ' + result['allow_file'] if result['allow_file'] else ''}")
    for p in peers:
        label = f"  # {p['label']}" if p.get("label") else ""
        state = "connected" if p["connected"] else "-"
        src = "  (--allow)" if p["source"] == "flag" else ""
        print(f"{p['node_id']}  {state:9}{label}{src}")
    return 0

"""``asgi-p2p gateway [TICKET]``: browsers, curl and any HTTP client reach peers through a local HTTP server.

With a ticket (or node id) every request goes to that node.  Without one the
node is named by the Host header (``http://<node-id>.localhost:8080/``; browsers
resolve ``*.localhost`` to this machine) or, with ``--path-style``, by the first
path segment (``/<node-id>/...``).  Names (``music.home.localhost``) are looked up
in ``--directory`` and with ``--mdns``.  The gateway dials with its own node key,
so a peer's ``--allow`` list decides whether it answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import NetworkConfig
from ..errors import InvalidConfiguration, InvalidNodeId, InvalidTicket, P2PError
from ..identity import NodeAddr, NodeId, SecretKey
from . import _common
from ._common import configure_logging, host_port, positive_float, positive_int

if TYPE_CHECKING:
    from ..gateway.gateway import Lookup

__all__ = ["add_gateway_args", "announce", "run_gateway", "subcommands"]

log = logging.getLogger("asgi_p2p.cli")

DEFAULT_LISTEN = "127.0.0.1:8080"


def subcommands() -> dict[str, _common.Subcommand]:
    """The command this module adds to ``asgi-p2p``."""
    return {
        "gateway": (
            "let browsers, curl and any HTTP client reach peers through a local HTTP server",
            add_gateway_args,
            run_gateway,
        )
    }


def add_gateway_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target",
        nargs="?",
        metavar="TICKET_OR_NODE",
        help="send every request to this node (default: the node named by the Host header, <node-id>.localhost)",
    )
    p.add_argument(
        "--listen",
        type=host_port,
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where the HTTP server listens (default: {DEFAULT_LISTEN}; port 0: any free port)",
    )
    p.add_argument(
        "--public",
        action="store_true",
        help="allow --listen on an address other machines reach (anyone who reaches it calls peers as this node)",
    )
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this certificate (chain)")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="the private key of --tls-cert")
    p.add_argument(
        "--host-suffix",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="route <node>.DOMAIN to <node> (repeatable; default: localhost)",
    )
    p.add_argument("--path-style", action="store_true", help="also route /<node>/path to <node> as /path")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NODE_ID",
        help="route to this node only (repeatable; default: any node that lets this gateway in; with a public "
        "--listen, only nodes whose allow-list names this gateway: nodes open to anyone are refused)",
    )
    keys = p.add_mutually_exclusive_group()
    keys.add_argument(
        "--key-file",
        type=Path,
        metavar="PATH",
        help=f"the gateway's key, created 0600 if missing (default: {_common.default_key_file()}); "
        "peers allow its node id",
    )
    keys.add_argument("--ephemeral", action="store_true", help="use a new random identity")
    p.add_argument(
        "--bind",
        metavar="HOST",
        help="local address of the UDP socket (default: 127.0.0.1 if the ticket names only loopback, else 0.0.0.0)",
    )
    p.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="502 when the peer cannot be reached within this (default: 10)",
    )
    p.add_argument(
        "--response-timeout",
        type=positive_float,
        default=60.0,
        metavar="SECONDS",
        help="504 when the peer's response headers take longer (default: 60; bodies are never cut)",
    )
    p.add_argument("--limit-concurrency", type=positive_int, metavar="N", help="answer 503 beyond N connections")
    p.add_argument("--url-file", type=Path, metavar="PATH", help="write the gateway's URL to PATH once listening")
    _common.add_log_args(p, config=False)
    nat = p.add_argument_group("NAT traversal and discovery")
    _common.add_relay_arg(nat, "our relay: reach peers through it, and dial node ids with no known address")
    _common.add_discovery_args(nat, serving=False)


def run_gateway(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, **_common.log_options(args))
    _common.require_http()
    host, port = args.listen
    from ..gateway.gateway import is_loopback

    if not is_loopback(host) and not args.public:
        raise InvalidConfiguration(
            f"--listen {host}:{port} is reachable from other machines: add --public if everyone who can reach "
            "it may call peers with this gateway's node id"
        )
    if (args.tls_cert is None) != (args.tls_key is None):
        raise InvalidConfiguration("--tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key):
        if path is not None and not path.is_file():
            raise InvalidConfiguration(f"cannot read {path}: no such file")
    args.relay_urls = _common.relay_urls_option(args.relay)
    if args.mdns_interface and not args.mdns:
        raise InvalidConfiguration("--mdns-interface needs --mdns")
    args.mdns_ifaces = _common.mdns_interfaces(args.mdns_interface)
    args.directory_addr = _common.directory_addr(args.directory) if args.directory is not None else None
    try:
        only = frozenset(NodeId.parse(item) for item in args.only) if args.only else None
    except InvalidNodeId as exc:
        raise InvalidConfiguration(f"--only: {exc}") from None
    target: NodeAddr | None = None
    if args.target is not None:
        from ..ticket import parse_target

        try:
            parsed = parse_target(args.target)
        except InvalidTicket as exc:
            raise InvalidConfiguration(f"{args.target!r}: {exc}") from None
        if parsed.path not in ("", "/"):
            raise InvalidConfiguration(f"{args.target!r}: give the ticket or node id without a path")
        target = parsed.addr
        if args.host_suffix or args.path_style:
            raise InvalidConfiguration("--host-suffix and --path-style route by request; a TICKET routes everything")
    from ..gateway.gateway import Routing

    try:
        routing = Routing(
            target=target,
            host_suffixes=tuple(s.lower().strip(".") for s in args.host_suffix) or ("localhost",),
            path_style=args.path_style,
            only=only,
        )
    except ValueError as exc:
        raise InvalidConfiguration(str(exc)) from None
    key = _common.secret_key(args)
    config = NetworkConfig.from_env()
    try:
        return asyncio.run(_run(args, routing, key, config))
    except OSError as exc:
        raise P2PError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def opt_in_required(args: argparse.Namespace, routing: Any) -> bool:
    """A public gateway routing by request (no TICKET, no --only) reaches only nodes that opted in."""
    from ..gateway.gateway import is_loopback

    return not is_loopback(args.listen[0]) and routing.target is None and routing.only is None


def _bind_host(args: argparse.Namespace, target: NodeAddr | None) -> str:
    if args.bind is not None:
        return str(args.bind)
    if target is not None and target.direct_addresses and target.relay_url is None:
        from ..gateway.gateway import is_loopback

        if all(is_loopback(h) for h, _ in target.direct_addresses):
            return "127.0.0.1"
    return "0.0.0.0"


async def _run(args: argparse.Namespace, routing: Any, key: Any, config: NetworkConfig) -> int:
    from ..discovery import ChainedDiscovery, DirectoryClient, Discovery, MdnsDiscovery, StaticDiscovery
    from ..gateway.gateway import Gateway, GatewayServer
    from ..node import Node

    node = await Node.bind(
        key, host=_bind_host(args, routing.target), config=config, **_common.relay_kwargs(args.relay_urls)
    )
    closers: list[Any] = []
    try:
        sources: list[Discovery] = []
        if routing.target is not None:
            sources.append(StaticDiscovery([routing.target]))
        if args.directory_addr is not None:
            offset = time.time() - asyncio.get_running_loop().time()  # wall-clock ok (CLI edge)
            directory = DirectoryClient(node, args.directory_addr, clock_offset=offset, timeout=args.connect_timeout)
            sources.append(directory)
            closers.append(directory)
        if args.mdns:
            mdns = MdnsDiscovery(interfaces=args.mdns_ifaces, timeout=min(args.connect_timeout, 3.0))
            sources.append(mdns)
            closers.append(mdns)
        lookup: Lookup | None = ChainedDiscovery(sources, timeout=args.connect_timeout) if sources else None
        probe = None
        if opt_in_required(args, routing):
            # a public gateway reaches a node only if the node lets this gateway in and not just anyone
            probe = await Node.bind(
                SecretKey.generate(), host=node.local_address[0], **_common.relay_kwargs(args.relay_urls)
            )
            closers.append(probe)
        gateway = Gateway(
            node,
            routing,
            lookup=lookup,
            connect_timeout=args.connect_timeout,
            response_timeout=args.response_timeout,
            opt_in_probe=probe,
        )
        host, port = args.listen
        server = GatewayServer(
            gateway,
            host,
            port,
            ssl_certfile=str(args.tls_cert) if args.tls_cert else None,
            ssl_keyfile=str(args.tls_key) if args.tls_key else None,
            log_level="warning" if args.log_level in ("info", "debug", "trace") else args.log_level,
            limit_concurrency=args.limit_concurrency,
        )
        stop = asyncio.Event()

        def on_signal(name: str) -> None:
            log.info("%s: stopping the gateway", name)
            stop.set()

        with _common.signal_handlers(on_signal):
            await server.start()
            try:
                announce(args, server, node.node_id, routing)
                if args.url_file is not None:
                    _common.write_atomically(args.url_file, server.url)
                await stop.wait()
            finally:
                await server.stop()
        return 0
    finally:
        for closer in closers:
            with contextlib.suppress(Exception):
                await closer.close()
        await node.close()


def announce(args: argparse.Namespace, server: Any, gateway_id: NodeId, routing: Any) -> None:
    """Print where the gateway listens, where it routes, and (listening publicly) who can now call peers."""
    from ..gateway.gateway import is_loopback

    url = server.url
    host = args.listen[0]
    scheme = "https" if server.tls else "http"
    lines = [f"asgi-p2p: gateway on {url}"]
    if routing.target is not None:
        lines.append(f"  every request goes to node {routing.target.node_id}")
        lines.append(f"  try      curl {url}/")
        reach = f"node {routing.target.node_id}"
    else:
        for suffix in routing.host_suffixes:
            lines.append(f"  routes   {scheme}://<node-id>.{suffix}:{server.port}/  (or a name from discovery)")
        if routing.path_style:
            lines.append(f"  routes   {url}/<node-id>/")
        if routing.only is not None:
            lines.append(f"  only to  {', '.join(str(n) for n in sorted(routing.only, key=str))}")
        if routing.only is not None:
            reach = "the nodes listed above"
        elif opt_in_required(args, routing):
            reach = "every node whose --allow list names this gateway (nodes open to anyone are refused)"
        else:
            reach = "any node that lets this gateway in"
    lines.append(f"  gateway node id  {gateway_id}  (peers with --allow must list it)")
    if not is_loopback(host):
        lines.append(
            f"  PUBLIC: anyone who can reach {host}:{server.port} can now call {reach} "
            f"with this gateway's identity ({gateway_id})"
        )
        if not server.tls:
            lines.append("  (plain HTTP: add --tls-cert and --tls-key to encrypt between clients and the gateway)")
    print("\n".join(lines), flush=True)
    if not is_loopback(host):
        print(
            f"asgi-p2p: warning: listening on {host}: requests from other machines reach peers as node {gateway_id}",
            file=sys.stderr,
            flush=True,
        )

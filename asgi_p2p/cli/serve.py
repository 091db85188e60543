"""``asgi-p2p serve APP`` (or just ``asgi-p2p APP``): serve an ASGI app to peers over HTTP/3.

The flags follow uvicorn's where they mean the same thing.  The HTTP layer is
imported only when a command runs, so ``asgi-p2p keygen`` and ``id`` keep working
even if it cannot be imported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import logging
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import NetworkConfig
from ..errors import InvalidConfiguration, InvalidNodeId, P2PError
from ..identity import NodeAddr, NodeId, SecretKey
from . import _common, ops
from ._common import LOG_LEVELS, configure_logging, describe_error, positive_float, positive_int, seconds_or_off

if TYPE_CHECKING:
    from ..endpoint import Endpoint

__all__ = ["import_app", "read_allow_file", "subcommands"]

log = logging.getLogger("asgi_p2p.cli")


def subcommands() -> dict[str, _common.Subcommand]:
    """The commands this module adds to ``asgi-p2p`` (consumed by :func:`asgi_p2p.cli.main`)."""
    from . import get

    return {
        "serve": ("serve an ASGI app to peers over HTTP/3 (also: `asgi-p2p APP`)", add_serve_args, run_serve),
        "get": ("fetch a URL from a peer over HTTP/3, like curl", get.add_get_args, get.run_get),
    }


# -- arguments --------------------------------------------------------------------


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("app", metavar="APP", help="the ASGI app as module:attribute, e.g. main:app")
    p.add_argument("--factory", action="store_true", help="APP is a function returning the app; call it")
    p.add_argument("--app-dir", default=".", metavar="DIR", help="directory to import APP from (default: .)")
    p.add_argument("--env-file", type=Path, metavar="PATH", help="read KEY=VALUE environment variables from PATH")
    _common.add_node_args(p, ephemeral_help="use a new random identity instead of a key file")
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="NODE_ID",
        help="only this node may connect (repeatable; default: any node)",
    )
    p.add_argument(
        "--allow-file",
        type=Path,
        metavar="PATH",
        help="file of node ids allowed to connect, one per line (# comments); `asgi-p2p pair` adds to it, "
        "`asgi-p2p peers revoke` removes from it, live",
    )
    ops.add_admin_args(p)
    p.add_argument("--root-path", default="", metavar="PATH", help="ASGI root_path, for apps mounted below a prefix")
    p.add_argument(
        "--lifespan",
        choices=["auto", "on", "off"],
        default="auto",
        help="run the app's lifespan startup/shutdown (default: auto)",
    )
    p.add_argument(
        "--limit-concurrency", type=positive_int, metavar="N", help="answer 503 once N requests are in flight"
    )
    p.add_argument(
        "--timeout-graceful-shutdown",
        type=positive_float,
        metavar="SECONDS",
        help="on shutdown, wait at most this long for in-flight requests",
    )
    p.add_argument(
        "--max-body-size", type=positive_int, metavar="BYTES", help="refuse request bodies larger than this with 413"
    )
    p.add_argument(
        "--request-header-timeout",
        type=seconds_or_off,
        metavar="SECONDS",
        help="answer 408 to a request stream whose headers are not complete this long after its first bytes "
        "(default 10; 0: off)",
    )
    p.add_argument(
        "--request-body-timeout",
        type=seconds_or_off,
        metavar="SECONDS",
        help="answer 408 (or reset) when the app waits this long for more request body (default 60; 0: off)",
    )
    p.add_argument(
        "--max-datagram-size",
        type=positive_int,
        metavar="BYTES",
        help="largest UDP payload QUIC sends (default 1200; larger is faster where paths carry it)",
    )
    p.add_argument("--log-level", choices=list(LOG_LEVELS), default="info", help="log level (default: info)")
    p.add_argument("--ticket-file", type=Path, metavar="PATH", help="write the ticket to PATH once serving")
    nat = p.add_argument_group("NAT traversal and discovery (nothing is published anywhere unless asked)")
    _common.add_relay_arg(
        nat,
        "home relay (p2p-relay://NODE_ID@HOST:PORT): peers that cannot reach us directly go through it, "
        "hole punching is signalled through it; the ticket then carries it and the address it sees us at",
    )
    _common.add_discovery_args(nat, serving=True)
    nat.add_argument(
        "--publish",
        action="store_true",
        help="publish our signed record (addresses, relay, --name) to --directory (default: the --relay's directory)",
    )
    nat.add_argument("--name", metavar="NAME", help="a name for this node in --directory and mDNS (e.g. music.home)")


# -- app loading --------------------------------------------------------------------


def import_app(spec: str, *, factory: bool = False, app_dir: str = ".") -> Callable[..., Any]:
    """Import ``module:attribute`` from ``app_dir`` (calling it if ``factory``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidConfiguration(f'APP must be "module:attribute" (like main:app), got {spec!r}')
    directory = str(Path(app_dir).resolve())
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise  # the app itself failed to import something: show the traceback
        raise InvalidConfiguration(
            f"could not import module {module_name!r} from {directory} (set --app-dir to where it lives)"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise InvalidConfiguration(f"module {module_name!r} has no attribute {attr!r}") from None
    if factory:
        if not callable(obj):
            raise InvalidConfiguration(f"--factory: {spec} is not callable")
        obj = obj()
        if inspect.isawaitable(obj):
            raise InvalidConfiguration(f"--factory: {spec} returned an awaitable; the factory must return the app")
    if not callable(obj):
        raise InvalidConfiguration(f"{spec} is not an ASGI app (it is a {type(obj).__name__})")
    return obj  # type: ignore[no-any-return]


def read_allow_file(path: Path) -> list[NodeId]:
    """Node ids from a file: one per line, blank lines and ``#`` comments ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidConfiguration(f"cannot read --allow-file {path}: {exc.strerror or exc}") from None
    ids: list[NodeId] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        try:
            ids.append(NodeId.parse(item))
        except InvalidNodeId as exc:
            raise InvalidConfiguration(f"{path}:{lineno}: {exc}") from None
    return ids


def _allow_list(args: argparse.Namespace) -> list[NodeId] | None:
    if not args.allow and args.allow_file is None:
        return None
    ids: list[NodeId] = []
    for text in args.allow:
        try:
            ids.append(NodeId.parse(text))
        except InvalidNodeId as exc:
            raise InvalidConfiguration(f"--allow: {exc}") from None
    if args.allow_file is not None:
        ids.extend(read_allow_file(args.allow_file))
    if not ids and args.no_admin_socket:
        raise InvalidConfiguration(f"--allow-file {args.allow_file} lists no node ids; nobody could connect")
    return ids


def _check_discovery_args(args: argparse.Namespace) -> None:
    """Validate --relay, --mdns*, --directory, --publish and --name (sets args.relay_url, ...)."""
    args.relay_url = _common.relay_url_option(args.relay)
    if args.mdns_interface and not args.mdns:
        raise InvalidConfiguration("--mdns-interface needs --mdns")
    args.mdns_ifaces = _common.mdns_interfaces(args.mdns_interface)
    if args.directory is not None and not args.publish:
        raise InvalidConfiguration("--directory: add --publish to publish this node's record there")
    directory = args.directory if args.directory is not None else args.relay_url if args.publish else None
    if args.publish and directory is None:
        raise InvalidConfiguration("--publish needs a directory: --directory TICKET_OR_RELAY_URL, or --relay URL")
    args.directory_addr = _common.directory_addr(directory) if directory is not None else None
    if args.name is not None:
        if not (args.publish or args.mdns):
            raise InvalidConfiguration("--name is published with --publish or --mdns; add one of them")
        from ..discovery.records import check_name

        try:
            check_name(args.name)
        except ValueError as exc:
            raise InvalidConfiguration(f"--name: {exc}") from None


# -- running ----------------------------------------------------------------------------


def run_serve(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    _common.require_http()
    if args.env_file is not None:
        _common.load_env_file(args.env_file)
    overrides: dict[str, Any] = {}
    if args.max_datagram_size is not None:
        overrides["max_datagram_size"] = args.max_datagram_size
    config = NetworkConfig.from_env(**overrides)
    allow = _allow_list(args)
    _check_discovery_args(args)
    key = _common.secret_key(args)
    try:
        app = import_app(args.app, factory=args.factory, app_dir=args.app_dir)
    except P2PError:
        raise
    except Exception as exc:
        traceback.print_exc()
        print(f"asgi-p2p: error: could not load {args.app}: {describe_error(exc)}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_serve(app, key, allow, config, args))
    except P2PError as exc:
        text = str(exc)
        if "\n" in text:
            log.debug("%s", text)  # the full story (e.g. the app's traceback) with --log-level debug
        print(f"asgi-p2p: error: {summarize(text)}", file=sys.stderr)
        return 1


def summarize(text: str) -> str:
    """One line for a possibly multi-line message: a traceback becomes its final ``Error: message`` line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else "unknown error"
    first = lines[0].replace("Traceback (most recent call last):", "").strip()
    last = lines[-1]
    return f"{first} {last}" if first and first != last else last


async def _serve(
    app: Callable[..., Any],
    key: SecretKey,
    allow: list[NodeId] | None,
    config: NetworkConfig,
    args: argparse.Namespace,
) -> int:
    from ..http import H3Server
    from ..node import Node
    from ..ticket import Ticket

    stop = asyncio.Event()
    force = asyncio.Event()

    def on_signal(signame: str) -> None:
        if stop.is_set():
            log.warning("%s again: stopping without waiting for in-flight requests", signame)
            force.set()
        else:
            log.info("%s: shutting down gracefully (send again to force)", signame)
            stop.set()

    from ..ops.allowfile import AllowList

    # the allow-file is read again (AllowList) so that pairing and revoking change it live
    policy = AllowList([NodeId.parse(a) for a in args.allow], args.allow_file) if allow is not None else None
    with _common.signal_handlers(on_signal):
        endpoint = await Node.bind(
            key, host=args.host, port=args.port, allow=policy, config=config, relay_url=args.relay_url
        )
        published: list[Any] = []  # discovery sources we published to (unpublished at shutdown)
        admin = None
        try:
            admin = await ops.start_admin(args, endpoint, policy)
            server_kwargs: dict[str, Any] = {
                "root_path": args.root_path,
                "lifespan": args.lifespan,
                "limit_concurrency": args.limit_concurrency,
                "timeout_graceful_shutdown": args.timeout_graceful_shutdown,
            }
            if args.max_body_size is not None:
                server_kwargs["max_body_size"] = args.max_body_size
            for name in ("request_header_timeout", "request_body_timeout"):
                if getattr(args, name) is not None:
                    server_kwargs[name] = getattr(args, name)
            server = H3Server(app, endpoint, **server_kwargs)
            starting = asyncio.ensure_future(server.startup())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not starting.done():  # a signal while the app's lifespan startup still runs
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await starting
                print("asgi-p2p: error: interrupted during application startup", file=sys.stderr)
                return 1
            starting.result()
            if endpoint.relay is not None:
                await _wait_relay(endpoint, config.connect_timeout, stop)
            node_addr = endpoint.node_addr()
            ticket = Ticket.from_node_addr(node_addr).encode()
            await _publish(endpoint, node_addr, args, published)
            if args.ticket_file is not None:
                _common.write_atomically(args.ticket_file, ticket)
                ticket_file = args.ticket_file
                # keep it current: the relay (re)connects or sees us at a new public address
                endpoint.on_node_addr_change(
                    lambda addr: _common.write_atomically(ticket_file, Ticket.from_node_addr(addr).encode())
                )
            _announce(args, endpoint, ticket, allow)
            if admin is not None:
                print(f"  admin    {admin.admin.path} (asgi-p2p status / invite / peers)", flush=True)
                if policy is not None and len(policy) == 0:
                    print("  (nobody is allowed yet: `asgi-p2p invite` makes an invite for a new device)", flush=True)
            await stop.wait()
            shutdown = asyncio.ensure_future(server.shutdown())
            forced = asyncio.ensure_future(force.wait())
            await asyncio.wait([shutdown, forced], return_when=asyncio.FIRST_COMPLETED)
            forced.cancel()
            if not shutdown.done():
                shutdown.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await shutdown
                print("asgi-p2p: error: shutdown forced; in-flight requests were cut off", file=sys.stderr)
                return 1
            shutdown.result()
            log.info("stopped")
            return 0
        finally:
            if admin is not None:
                await admin.close()
            for source in reversed(published):
                await _unpublish(source)
            await endpoint.close()


async def _wait_relay(endpoint: Endpoint, timeout: float, stop: asyncio.Event) -> None:
    """Wait (at most ``timeout``) for the relay, so that the ticket carries the address it sees us at.

    A relay that does not answer is not fatal: the relay client keeps trying in the
    background, and the ticket still names the relay.  A signal ends the wait early.
    """
    relay = endpoint.relay
    assert relay is not None
    waiting = asyncio.ensure_future(relay.wait_connected(timeout))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([waiting, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not waiting.done():
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await waiting
        return
    exc = waiting.exception()
    if exc is not None:
        log.warning(
            "relay %s is not connected yet (%s); serving anyway, still trying to reach it",
            relay.relay_url,
            describe_error(exc),
        )


async def _publish(endpoint: Endpoint, node_addr: NodeAddr, args: argparse.Namespace, published: list[Any]) -> None:
    """``--publish`` to ``--directory`` and ``--mdns``: announce our record where asked (nowhere by default)."""
    if args.directory_addr is not None:
        from ..discovery import DirectoryClient

        # records carry wall-clock expiry times (the shared clock of every directory)
        offset = time.time() - asyncio.get_running_loop().time()  # wall-clock ok (CLI edge)
        directory = DirectoryClient(endpoint, args.directory_addr, clock_offset=offset)
        try:
            await directory.publish(node_addr, args.name)
        except P2PError as exc:
            await directory.close()
            raise P2PError(f"--publish: {describe_error(exc)}") from None
        published.append(directory)
        log.info("published our record to directory %s", args.directory_addr.node_id.fmt_short())
    if args.mdns:
        from ..discovery import MdnsDiscovery

        print(
            "asgi-p2p: warning: --mdns announces this node (its id, addresses"
            f"{' and name' if args.name else ''}) to every device on the LAN",
            file=sys.stderr,
            flush=True,
        )
        mdns = MdnsDiscovery(interfaces=args.mdns_ifaces)
        try:
            await mdns.publish(node_addr, args.name)
        except (P2PError, ValueError, OSError) as exc:
            with contextlib.suppress(Exception):
                await mdns.close()
            raise P2PError(f"--mdns: {describe_error(exc)}") from None
        published.append(mdns)


async def _unpublish(source: Any) -> None:
    """Withdraw a record at shutdown (best effort: it expires by itself anyway)."""
    try:
        async with asyncio.timeout(2.0):
            await source.unpublish()
    except (P2PError, TimeoutError, OSError) as exc:
        log.info("could not withdraw our record from %s: %s", getattr(source, "label", source), describe_error(exc))
    finally:
        with contextlib.suppress(Exception):
            await source.close()


def _announce(args: argparse.Namespace, endpoint: Endpoint, ticket: str, allow: list[NodeId] | None) -> None:
    host, port = endpoint.local_address[0], endpoint.local_address[1]
    udp = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    who = "any node" if allow is None else f"{len(allow)} allowed node(s)"
    lines = [
        f"asgi-p2p: serving {args.app} over HTTP/3 (udp {udp}, {who})",
        f"  node id  {endpoint.node_id}",
        f"  ticket   {ticket}",
        f"  try      asgi-p2p get {ticket}/",
    ]
    relay = endpoint.relay
    if relay is not None:
        seen = relay.observed_address
        where = f" (sees us at {_common.fmt_addr(seen)})" if seen is not None else " (not connected yet)"
        lines.append(f"  relay    {relay.relay_url}{where}")
    if args.directory_addr is not None:
        named = f" as {args.name!r}" if args.name else ""
        lines.append(f"  published to directory {args.directory_addr.node_id}{named}")
    if args.mdns:
        lines.append(f"  mdns     announced on {', '.join(args.mdns_ifaces or ['every interface'])}")
    if host in ("127.0.0.1", "::1", "localhost"):
        lines.append("  (bound to loopback: only this machine can connect; use --host 0.0.0.0 for others)")
    print("\n".join(lines), flush=True)

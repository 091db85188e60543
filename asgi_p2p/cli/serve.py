"""``asgi-p2p serve APP`` (or just ``asgi-p2p APP``): serve an ASGI app to peers over HTTP/3.

The flags follow uvicorn's where they mean the same thing.  The HTTP layer is
imported only when a command runs, so ``asgi-p2p keygen`` and ``id`` keep working
even if it cannot be imported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import inspect
import logging
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import NetworkConfig
from ..errors import InvalidConfiguration, InvalidNodeId, P2PError
from ..identity import NodeAddr, NodeId, SecretKey
from . import _common, _ops, ops
from ._common import configure_logging, describe_error, positive_float, positive_int, seconds_or_off

if TYPE_CHECKING:
    from ..endpoint import Endpoint
    from ..ops.allowfile import AllowList

__all__ = ["add_server_args", "default_peer_state", "import_app", "read_allow_file", "serve_app", "subcommands"]

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
    p.add_argument("--root-path", default="", metavar="PATH", help="ASGI root_path, for apps mounted below a prefix")
    p.add_argument(
        "--lifespan",
        choices=["auto", "on", "off"],
        default="auto",
        help="run the app's lifespan startup/shutdown (default: auto)",
    )
    p.add_argument(
        "--reload",
        action="store_true",
        help="development: restart the server when a .py file under --app-dir (or --reload-dir) changes",
    )
    p.add_argument(
        "--reload-dir",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="watch this directory with --reload (repeatable; default: --app-dir)",
    )
    add_server_args(p)


def add_server_args(p: argparse.ArgumentParser) -> None:
    """The options of serving any app to peers (``serve``, ``proxy``): identity, allow-list, limits, discovery."""
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
        "--idle-connection-timeout",
        type=seconds_or_off,
        metavar="SECONDS",
        help="close a peer's connection once it has had no request open for this long, "
        "whatever keeps it alive (default 60; 0: off)",
    )
    p.add_argument(
        "--max-datagram-size",
        type=positive_int,
        metavar="BYTES",
        help="largest UDP payload QUIC sends (default 1200; larger is faster where paths carry it)",
    )
    _ops.add_peer_limit_args(p)
    _ops.add_connection_limit_args(p)
    _common.add_log_args(p, access=True)
    p.add_argument(
        "--ticket-file",
        type=Path,
        metavar="PATH",
        help="write the ticket to PATH once serving (removed at start and at exit, so it is never stale)",
    )
    peer_state = p.add_mutually_exclusive_group()
    peer_state.add_argument(
        "--peer-state",
        type=Path,
        metavar="PATH",
        help="file where the node keeps the addresses and connection ids of its live direct connections, so that "
        "after a crash and a start on the same port it resets them at once and its peers' next requests do not "
        "wait a round trip to find out (default with a fixed --port: USER_DATA_DIR/asgi-p2p/"
        "peer-state-NODE_ID-PORT.json; none with --port 0 or --ephemeral)",
    )
    peer_state.add_argument(
        "--no-peer-state",
        action="store_true",
        help="keep no peer state file (after a crash, peers learn of the restart when they next send)",
    )
    _common.add_config_arg(p)
    p.add_argument(
        "--public-host",
        metavar="HOST",
        help="address or name peers reach us at, put first in the ticket (behind port forwarding or Docker)",
    )
    p.add_argument(
        "--public-port",
        type=_common.port_number,
        metavar="PORT",
        help="UDP port peers reach us at with --public-host (default: the bound port)",
    )
    _ops.add_metrics_args(p)
    nat = p.add_argument_group("NAT traversal and discovery (nothing is published anywhere unless asked)")
    _common.add_relay_arg(
        nat,
        "home relay (p2p-relay://NODE_ID@HOST:PORT): peers that cannot reach us directly go through it, "
        "hole punching is signalled through it; the ticket then carries it and the address it sees us at",
    )
    _common.add_discovery_args(nat, serving=True)
    _common.add_dns_args(nat, serving=True)
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


def default_peer_state(node_id: NodeId, port: int) -> Path:
    """Where a node with key ``node_id`` on UDP port ``port`` keeps its peer state file when
    ``--peer-state`` is not given (by port too: two processes with one key on two ports keep
    a file each)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("asgi-p2p")) / f"peer-state-{node_id}-{port}.json"


def _peer_state_path(args: argparse.Namespace, key: SecretKey) -> Path | None:
    """The peer state file of this run (its directory made, mode 0700), or None."""
    if args.no_peer_state:
        return None
    path: Path | None = args.peer_state
    if path is None:
        if args.ephemeral or not args.port:
            # a new identity, or a new port, each run: no peer would take a reset from it
            return None
        path = default_peer_state(key.node_id, args.port)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("no peer state file: %s", exc)
        return None
    return path


def read_allow_file(path: Path) -> list[NodeId]:
    """Node ids from a file: one per line, blank lines and ``#`` comments ignored."""
    from ..ops.allowfile import parse_allow_text

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidConfiguration(f"cannot read --allow-file {path}: {exc.strerror or exc}") from None
    return [e.node_id for e in parse_allow_text(text, str(path))]


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
    args.relay_urls = _common.relay_urls_option(args.relay, _common.setting_source(args, "relay_url", "--relay"))
    # --publish with no --directory publishes to the (first) relay's directory
    args.relay_url = args.relay_urls[0] if args.relay_urls else None
    if args.mdns_interface and not args.mdns:
        raise InvalidConfiguration("--mdns-interface needs --mdns")
    args.mdns_ifaces = _common.mdns_interfaces(args.mdns_interface)
    if args.directory is not None and not args.publish:
        raise InvalidConfiguration("--directory: add --publish to publish this node's record there")
    directory = args.directory if args.directory is not None else args.relay_url if args.publish else None
    if args.publish and directory is None:
        raise InvalidConfiguration("--publish needs a directory: --directory TICKET_OR_RELAY_URL, or --relay URL")
    args.directory_addr = _common.directory_addr(directory) if directory is not None else None
    args.dns = _common.dns_update_option(args)
    if args.name is not None:
        if not (args.publish or args.mdns or args.dns):
            raise InvalidConfiguration("--name is published with --publish or --mdns (or --dns-zone); add one of them")
        from ..discovery.records import check_name

        try:
            check_name(args.name)
        except ValueError as exc:
            raise InvalidConfiguration(f"--name: {exc}") from None


# -- running ----------------------------------------------------------------------------


def run_serve(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, **_common.log_options(args))
    if args.reload:
        return _run_reloading(args)
    _common.require_http()
    app_loader = functools.partial(import_app, args.app, factory=args.factory, app_dir=args.app_dir)
    return serve_app(app_loader, args, args.app)


def serve_app(load: Callable[[], Callable[..., Any]], args: argparse.Namespace, label: str) -> int:
    """Serve the app ``load()`` returns with the options :func:`add_server_args` added (and
    ``args.root_path``, ``args.lifespan``); ``label`` names it in the startup lines."""
    _remove_ticket_file(args)
    if args.public_port is not None and args.public_host is None:
        raise InvalidConfiguration("--public-port needs --public-host (the address peers reach us at)")
    # NetworkConfig fields from --config (the environment's variables for them win, flags win over both)
    overrides: dict[str, Any] = dict(args.settings.network) if getattr(args, "settings", None) else {}
    if args.max_datagram_size is not None:
        overrides["max_datagram_size"] = args.max_datagram_size
    overrides.update(_ops.connection_limit_overrides(args))
    config = NetworkConfig.from_env(**overrides)
    allow = _allow_list(args)
    _check_discovery_args(args)
    _ops.check_metrics_args(args)
    key = _common.secret_key(args)
    try:
        app = load()
    except P2PError:
        raise
    except Exception as exc:
        traceback.print_exc()
        print(f"asgi-p2p: error: could not load {label}: {describe_error(exc)}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_serve(app, key, allow, config, args, label))
    except P2PError as exc:
        text = str(exc)
        if "\n" in text:
            log.debug("%s", text)  # the full story (e.g. the app's traceback) with --log-level debug
        print(f"asgi-p2p: error: {summarize(text)}", file=sys.stderr)
        return 1
    finally:
        _remove_ticket_file(args)


def _run_reloading(args: argparse.Namespace) -> int:
    """``--reload``: run the server in a child process, restarted when a ``.py`` file changes (as uvicorn)."""
    import os
    import shlex

    from watchfiles import PythonFilter, run_process

    dirs = [Path(d).resolve() for d in (args.reload_dir or [args.app_dir])]
    for d in dirs:
        if not d.is_dir():
            raise InvalidConfiguration(f"--reload-dir {d}: not a directory")
    argv = [a for a in getattr(args, "argv", None) or [] if a != "--reload"]
    if not argv:
        raise InvalidConfiguration("--reload needs the command line it restarts (run it as asgi-p2p ... --reload)")
    os.environ["ASGI_P2P_RELOAD"] = "0"  # the child serves; a config file's `reload = true` must not recurse
    command = shlex.join([sys.executable, "-m", "asgi_p2p", *argv])
    log.info(
        "--reload: watching %s for .py changes (for development: each restart drops connections)",
        ", ".join(map(str, dirs)),
    )

    def restarting(changes: set[tuple[Any, str]]) -> None:
        names = sorted({Path(path).name for _, path in changes})
        log.info("--reload: %s changed; restarting the server", ", ".join(names))

    run_process(
        *dirs,
        target=command,
        target_type="command",
        watch_filter=PythonFilter(),
        callback=restarting,
        sigint_timeout=int(args.timeout_graceful_shutdown or 5) + 5,
    )
    return 0


def _remove_ticket_file(args: argparse.Namespace) -> None:
    """At start and at exit: a script waiting for the ticket file never reads a stale one."""
    if args.ticket_file is not None:
        with contextlib.suppress(FileNotFoundError):
            args.ticket_file.unlink()


def advertised(addr: NodeAddr, public_host: str | None, public_port: int | None) -> NodeAddr:
    """``addr`` with ``--public-host``:``--public-port`` first among its direct addresses."""
    if public_host is None:
        return addr
    port = public_port if public_port is not None else (addr.direct_addresses[0][1] if addr.direct_addresses else 0)
    public = (public_host, port)
    rest = [a for a in addr.direct_addresses if a != public]
    return NodeAddr(addr.node_id, [public, *rest], addr.relay_url)


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
    label: str,
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

    # ONE allow-list object: pairing and revoking (the admin socket) change it and its file
    # live, and SIGHUP re-reads the file through it (LiveSettings.reload)
    policy = AllowList([NodeId.parse(a) for a in args.allow], args.allow_file) if allow is not None else None
    live = LiveSettings(args, policy)
    with _common.signal_handlers(on_signal):
        endpoint = await Node.bind(
            key,
            host=args.host,
            port=args.port,
            allow=policy,
            config=config,
            peer_state=_peer_state_path(args, key),
            **_common.relay_kwargs(args.relay_urls),
        )
        published: list[Any] = []  # discovery sources we published to (unpublished at shutdown)
        stop_republishing: Callable[[], Awaitable[None]] = _nothing
        metrics = None
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
            for name in _SERVER_TIMEOUTS:
                if getattr(args, name) is not None:
                    server_kwargs[name] = getattr(args, name)
            server = H3Server(app, endpoint, **server_kwargs, **_ops.peer_limit_kwargs(args))
            metrics = await _ops.start_metrics(args, endpoint=endpoint, http=server)
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
            public_host, public_port = args.public_host, args.public_port
            if public_port is None and public_host is not None:
                public_port = endpoint.local_address[1]
            node_addr = advertised(endpoint.node_addr(), public_host, public_port)
            ticket = Ticket.from_node_addr(node_addr).encode()
            await _publish(endpoint, node_addr, args, published)
            if published:
                stop_republishing = _republish_on_new_home(
                    endpoint, node_addr, args, published, public_host, public_port
                )
            if args.ticket_file is not None:
                _common.write_atomically(args.ticket_file, ticket)
                ticket_file = args.ticket_file
                # keep it current: the relay (re)connects or sees us at a new public address
                endpoint.on_node_addr_change(
                    lambda addr: _common.write_atomically(
                        ticket_file, Ticket.from_node_addr(advertised(addr, public_host, public_port)).encode()
                    )
                )
            _announce(args, endpoint, ticket, None if policy is None else [e.node_id for e in policy.entries()], label)
            if admin is not None:
                print(f"  admin    {admin.admin.path} (asgi-p2p status / invite / peers)", flush=True)
                if policy is not None and len(policy) == 0:
                    print("  (nobody is allowed yet: `asgi-p2p invite` makes an invite for a new device)", flush=True)
            live.server, live.endpoint = server, endpoint
            with _common.on_sighup(live.reload):
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
            if metrics is not None:
                await metrics.close()
            await stop_republishing()
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


def _republish_on_new_home(
    endpoint: Endpoint,
    node_addr: NodeAddr,
    args: argparse.Namespace,
    published: list[Any],
    public_host: str | None,
    public_port: int | None,
) -> Callable[[], Awaitable[None]]:
    """Publish our record again wherever it was published when our home relay changes (several relays).

    Returns what stops it (awaited before the records are withdrawn at shutdown).
    """
    state: dict[str, Any] = {"relay": node_addr.relay_url, "task": None, "again": False}

    async def republish() -> None:
        while True:
            state["again"] = False
            addr = advertised(endpoint.node_addr(), public_host, public_port)
            for source in list(published):
                try:
                    await source.publish(addr, args.name)
                except (P2PError, OSError) as exc:
                    log.warning("could not republish our record to %s: %s", source, describe_error(exc))
            log.info("republished our record: home relay %s", addr.relay_url)
            if not state["again"]:
                return

    def changed(addr: NodeAddr) -> None:
        if addr.relay_url == state["relay"]:
            return
        state["relay"] = addr.relay_url
        task = state["task"]
        if task is not None and not task.done():
            state["again"] = True  # publish the newest once this round is done
            return
        state["task"] = asyncio.get_running_loop().create_task(republish())

    forget = endpoint.on_node_addr_change(changed)

    async def stop() -> None:
        forget()
        task = state["task"]
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return stop


async def _nothing() -> None:
    return None


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
        log.info("published our record to directory %s", args.directory_addr.node_id)
    if args.dns is not None:
        from ..discovery import DnsDiscovery

        offset = time.time() - asyncio.get_running_loop().time()  # wall-clock ok (CLI edge)
        dns = DnsDiscovery(args.dns_zone, key=endpoint.secret_key, update=args.dns, clock_offset=offset)
        try:
            await dns.publish(node_addr, args.name)
        except P2PError as exc:
            await dns.close()
            raise P2PError(f"--dns-zone: {describe_error(exc)}") from None
        published.append(dns)
        log.info("published our record in DNS at %s", dns.qname(endpoint.node_id))
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


#: Settings SIGHUP applies to the running server (the H3Server attribute each one sets).
_LIVE_SERVER_SETTINGS = {
    "limit_concurrency": "limit_concurrency",
    "max_body_size": "max_body_size",
    "timeout_graceful_shutdown": "timeout_graceful_shutdown",
    "root_path": "root_path",
}
#: Settings SIGHUP applies too, besides those: the allow-list and logging.
_LIVE_OTHER = {"allow", "allow_file", "log_level", "no_access_log", "log_format", "log_config", "config", "env_file"}
#: server timeouts a SIGHUP changes on the running server (0 or None in the settings: off or default)
_SERVER_TIMEOUTS = ("request_header_timeout", "request_body_timeout", "idle_connection_timeout")
#: Arguments SIGHUP never compares (derived, or not settings).
_NOT_COMPARED = {
    "command",
    "settings",
    "reload_settings",
    "relay_url",
    "relay_urls",
    "mdns_ifaces",
    "directory_addr",
    "dns",
}


class LiveSettings:
    """What SIGHUP can change while serving: the allow-list, the server's limits, logging."""

    def __init__(self, args: argparse.Namespace, policy: AllowList | None) -> None:
        self.args = args
        #: the endpoint's allow policy, shared with pairing and revoking (None: any node may connect)
        self.policy = policy
        #: started without an allow-list: any node may connect (SIGHUP cannot switch that)
        self.any_node = policy is None
        self.server: Any = None
        self.endpoint: Endpoint | None = None

    def reload(self) -> None:
        """Re-read the config file, the environment's settings and the allow-file; apply what can change."""
        reload_settings = getattr(self.args, "reload_settings", None)
        try:
            if reload_settings is not None:
                new, _ = reload_settings()
            else:
                new = argparse.Namespace(**vars(self.args))
            allow = _allow_list(new)
        except (P2PError, SystemExit) as exc:
            log.error("SIGHUP: reload failed, settings unchanged: %s", exc)
            return
        old = self.args
        for name in ("relay_url", "relay_urls", "mdns_ifaces", "directory_addr", "dns", "settings", "reload_settings"):
            if hasattr(old, name):
                setattr(new, name, getattr(old, name))
        restart: list[str] = []
        if self.any_node != (allow is None):
            restart.append("--allow/--allow-file (between any node and an allow-list)")
        elif self.policy is not None:
            self._apply_allow(self.policy, new)
        for dest, attr in _LIVE_SERVER_SETTINGS.items():
            if getattr(new, dest) != getattr(old, dest) and self.server is not None:
                value = getattr(new, dest)
                setattr(self.server, attr, value.rstrip("/") if dest == "root_path" else value)
                log.info("SIGHUP: %s is now %s", _common.flag_name(dest), value)
        for dest in _SERVER_TIMEOUTS:
            if getattr(new, dest) != getattr(old, dest) and self.server is not None:
                value = getattr(new, dest)
                setattr(self.server, dest, (value or None) if value is not None else _server_default(dest))
                log.info("SIGHUP: %s is now %s", _common.flag_name(dest), value)
        if any(getattr(new, d, None) != getattr(old, d, None) for d in _common.LOG_SETTINGS):
            if _common.reconfigure_logging(old, new):
                log.info("SIGHUP: logging reconfigured (level %s)", new.log_level)
            else:  # keep the settings logging runs with, so that the next SIGHUP tries the new ones again
                for dest in _common.LOG_SETTINGS:
                    setattr(new, dest, getattr(old, dest, None))
        for dest, value in sorted(vars(new).items()):
            if dest in _NOT_COMPARED or dest in _LIVE_OTHER or dest in _LIVE_SERVER_SETTINGS:
                continue
            if dest in _SERVER_TIMEOUTS:
                continue
            if getattr(old, dest, None) != value:
                restart.append(_common.flag_name(dest))
        if restart:
            log.warning("SIGHUP: %s changed but cannot change while serving; restart to apply", ", ".join(restart))
        for dest in _LIVE_SERVER_SETTINGS.keys() | set(_SERVER_TIMEOUTS) | _LIVE_OTHER:
            if hasattr(new, dest):
                setattr(old, dest, getattr(new, dest))

    def _apply_allow(self, policy: AllowList, new: argparse.Namespace) -> None:
        """Re-read the allow-file through ``policy`` (the object pairing and revoking change too),
        taking a changed ``--allow`` / ``--allow-file``; close the connections of removed ids."""
        before = {e.node_id for e in policy.entries()}
        try:
            policy.reload([NodeId.parse(a) for a in new.allow], new.allow_file)
        except (P2PError, ValueError) as exc:
            log.error("SIGHUP: allow-list reload failed, allow-list unchanged: %s", exc)
            return
        after = {e.node_id for e in policy.entries()}
        added, removed = after - before, before - after
        closed = 0
        if self.endpoint is not None:
            for node in sorted(removed, key=str):
                closed += self.endpoint.close_peer(node, "no longer allowed")
        log.info(
            "SIGHUP: allow-list reloaded: %d node id(s), %d added, %d removed (%d connection(s) of removed ids closed)",
            len(after),
            len(added),
            len(removed),
            closed,
        )
        for node in sorted(added, key=str):
            log.info("SIGHUP: allowed %s", node)
        for node in sorted(removed, key=str):
            log.info("SIGHUP: no longer allowed %s", node)


def _server_default(dest: str) -> float:
    from ..http import server

    defaults = {
        "request_header_timeout": server.DEFAULT_REQUEST_HEADER_TIMEOUT,
        "request_body_timeout": server.DEFAULT_REQUEST_BODY_TIMEOUT,
        "idle_connection_timeout": server.DEFAULT_IDLE_CONNECTION_TIMEOUT,
    }
    return defaults[dest]


def _announce(
    args: argparse.Namespace, endpoint: Endpoint, ticket: str, allow: list[NodeId] | None, label: str
) -> None:
    host, port = endpoint.local_address[0], endpoint.local_address[1]
    udp = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    who = "any node" if allow is None else f"{len(allow)} allowed node(s)"
    lines = [
        f"asgi-p2p: serving {label} over HTTP/3 (udp {udp}, {who})",
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

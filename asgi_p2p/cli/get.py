"""``asgi-p2p get TICKET_OR_NODE[/path]``: curl for peers.

Exit status (as curl's where they overlap): 0 on any HTTP response (unless
``-f``), 22 for an HTTP status >= 400 with ``-f``, 6 when a node id or name
cannot be resolved (``--directory``, ``--mdns``), 7 when the peer cannot be
reached or authenticated, 23 when stdout closes early, 28 on timeout, 1 for
anything else (bad arguments, unreadable files, protocol errors).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ..config import NetworkConfig
from ..errors import (
    AuthenticationFailed,
    ConnectionFailed,
    DiscoveryFailed,
    InvalidTicket,
    NodeNotFound,
    NoRoute,
    P2PError,
    Timeout,
)
from ..identity import NodeAddr, NodeId, SecretKey
from ..paths.prober import PathInfo
from ..ticket import parse_target
from ._common import (
    add_discovery_args,
    add_dns_args,
    add_log_args,
    add_relay_arg,
    configure_logging,
    describe_error,
    directory_addr,
    fmt_path,
    host_port,
    log_options,
    mdns_interfaces,
    positive_float,
    relay_kwargs,
    relay_urls_option,
    require_http,
    setting_source,
)

if TYPE_CHECKING:
    import httpx

    from ..endpoint import Endpoint
    from ..endpoint.connection import PeerConnection

__all__ = ["add_get_args", "run_get"]

log = logging.getLogger("asgi_p2p.cli")

EXIT_ERROR = 1
EXIT_RESOLVE = 6
EXIT_CONNECT = 7
EXIT_HTTP = 22
EXIT_WRITE = 23
EXIT_TIMEOUT = 28


def add_get_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target",
        metavar="TICKET_OR_NODE[/PATH]",
        help="a ticket (p2p1...) or node id, optionally followed by /path?query",
    )
    p.add_argument("-X", "--request", dest="method", metavar="METHOD", help="HTTP method (default: GET, POST with -d)")
    p.add_argument(
        "-H",
        "--header",
        dest="headers",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="add a request header (repeatable)",
    )
    p.add_argument(
        "-d",
        "--data",
        action="append",
        default=[],
        metavar="DATA",
        help="request body; @FILE reads a file, @- reads stdin (repeated -d are joined with &)",
    )
    p.add_argument("-i", "--include", action="store_true", help="print the status line and response headers")
    p.add_argument("-I", "--head", action="store_true", help="send HEAD and print the response headers")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the body to FILE (with a progress bar)")
    p.add_argument("-f", "--fail", action="store_true", help="exit 22 (and print no body) when the status is >= 400")
    p.add_argument("-s", "--silent", action="store_true", help="no progress bar or summary")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="connection details and request/response headers on stderr"
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=30.0,
        metavar="SECONDS",
        help="give up after this long without progress (default: 30)",
    )
    p.add_argument(
        "--addr",
        action="append",
        type=host_port,
        default=[],
        metavar="HOST:PORT",
        help="a direct address of the node (needed with a bare node id)",
    )
    p.add_argument("--bind", metavar="HOST", help="local address of the UDP socket (default: chosen from the peer's)")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--key-file", type=Path, metavar="PATH", help="identify with this key (default: ephemeral)")
    keys.add_argument("--ephemeral", action="store_true", help="use a new random identity (the default)")
    p.add_argument(
        "--no-session-cache",
        action="store_true",
        help="with --key-file: do not keep TLS session tickets between runs (by default they are kept in "
        "$XDG_CACHE_HOME/asgi-p2p/sessions/, mode 0600, so that the next run resumes and sends a GET as 0-RTT), "
        "nor the networks where UDP to the relay was blocked ($XDG_CACHE_HOME/asgi-p2p/networks/: there the next "
        "run dials the relay over TCP at once)",
    )
    add_log_args(p, default_level="warning", config=False)
    nat = p.add_argument_group("NAT traversal and discovery")
    add_relay_arg(
        nat,
        "our relay (p2p-relay://NODE_ID@HOST:PORT), for a node we cannot reach directly; "
        "by default the relay the ticket (or directory record) names",
    )
    add_discovery_args(nat, serving=False)
    add_dns_args(nat, serving=False)
    nat.add_argument(
        "--wait-direct",
        type=positive_float,
        metavar="SECONDS",
        help="after connecting through a relay, wait up to SECONDS for a direct (hole-punched) path before "
        "sending the request, so that the transfer goes direct; sent over the relay if none appears",
    )


class _Fail(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def run_get(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, **log_options(args))
    try:
        require_http()
        return asyncio.run(_get(args))
    except _Fail as exc:
        _error(str(exc))
        return exc.code
    except P2PError as exc:
        _error(describe_error(exc))
        return _exit_code_for(exc)
    except BrokenPipeError:  # `asgi-p2p get ... | head`: the reader has enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_WRITE
    except OSError as exc:
        _error(describe_error(exc))
        return EXIT_ERROR


def _error(message: str) -> None:
    print(f"asgi-p2p: error: {message}", file=sys.stderr, flush=True)


def _exit_code_for(exc: BaseException) -> int:
    import httpx

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (Timeout, TimeoutError, httpx.TimeoutException)):
            return EXIT_TIMEOUT
        if isinstance(cur, (ConnectionFailed, NodeNotFound, NoRoute, httpx.ConnectError)):
            return EXIT_CONNECT
        cur = cur.__cause__ or cur.__context__
    return EXIT_ERROR


def _bind_host(addr: NodeAddr, *, lan: bool = False) -> str:
    """A local address from which the node (and its relay) can be reached.

    Loopback only when everything we will talk to is on loopback; otherwise the
    wildcard of the family of the first address.
    """
    hosts = [h for h, _ in addr.direct_addresses]
    if addr.relay_url is not None:
        from ..relay.url import RelayUrl

        with contextlib.suppress(P2PError):
            hosts.append(RelayUrl.parse(addr.relay_url).host.strip("[]"))
    if not hosts or lan:
        return "0.0.0.0"
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for host in hosts:
        try:
            ips.append(ipaddress.ip_address(host.split("%", 1)[0]))
        except ValueError:
            if host != "localhost":
                return "0.0.0.0"
            ips.append(ipaddress.ip_address("127.0.0.1"))
    if ips[0].version == 6:
        return "::1" if all(ip.is_loopback for ip in ips) else "::"
    return "127.0.0.1" if all(ip.is_loopback for ip in ips) else "0.0.0.0"


def _parse_headers(raw: list[str]) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for item in raw:
        name, sep, value = item.partition(":")
        if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
            raise _Fail(EXIT_ERROR, f"-H {item!r}: expected 'Name: value'")
        headers.append((name.strip(), value.strip()))
    return headers


def _read_data(items: list[str]) -> bytes | None:
    if not items:
        return None
    parts: list[bytes] = []
    for item in items:
        if item == "@-":
            parts.append(sys.stdin.buffer.read())
        elif item.startswith("@"):
            try:
                parts.append(Path(item[1:]).read_bytes())
            except OSError as exc:
                raise _Fail(EXIT_ERROR, f"-d {item}: cannot read file: {exc.strerror or exc}") from None
        else:
            parts.append(item.encode("utf-8"))
    return b"&".join(parts)


async def _get(args: argparse.Namespace) -> int:
    relay_opt = relay_urls_option(args.relay, setting_source(args, "relay_url", "--relay"))
    if args.mdns_interface and not args.mdns:
        raise _Fail(EXIT_ERROR, "--mdns-interface needs --mdns")
    mdns_ifaces = mdns_interfaces(args.mdns_interface)
    directory = directory_addr(args.directory) if args.directory is not None else None
    if args.dns_server and args.dns_zone is None:
        raise _Fail(EXIT_ERROR, "--dns-server needs --dns-zone")
    can_discover = directory is not None or args.mdns or args.dns_zone is not None
    addr, name, path = _parse_target_or_name(args.target, can_discover)
    if args.addr:
        if addr is None:
            raise _Fail(EXIT_ERROR, "--addr needs a node id or ticket, not a name")
        addr = NodeAddr(addr.node_id, [*args.addr, *addr.direct_addresses], addr.relay_url)
    discover = name is not None or (addr is not None and not addr.direct_addresses and addr.relay_url is None)
    if discover and not can_discover:
        assert addr is not None
        raise NodeNotFound(
            f"no address known for node {addr.node_id}; use its ticket (p2p1..., printed by `asgi-p2p serve`), "
            "add --addr HOST:PORT, or look it up with --dns-zone ZONE, --directory TICKET or --mdns"
        )
    headers = _parse_headers(args.headers)
    body = _read_data(args.data)
    key = SecretKey.load(args.key_file) if args.key_file is not None else SecretKey.generate()
    base = NetworkConfig.from_env()
    config = base.replace(connect_timeout=min(base.connect_timeout, args.timeout))
    if args.verbose:
        kind = f"key {args.key_file}" if args.key_file else "ephemeral key"
        _v(f"* local node {key.node_id} ({kind})")

    tickets = None if args.key_file is None or args.no_session_cache else session_cache_path(key.node_id)
    relay_factory = None
    if tickets is not None:
        from ..relay.client import RelayClient
        from ..relay.netmemory import TransportMemory

        memory = TransportMemory(network_memory_path(key.node_id))
        relay_factory = functools.partial(RelayClient, transport_memory=memory)

    async def bind(near: NodeAddr, relays: list[str], bind_key: SecretKey = key) -> Endpoint:
        from ..node import Node

        first = relays[0] if relays else None
        host = args.bind or _bind_host(NodeAddr(near.node_id, near.direct_addresses, first), lan=args.mdns)
        return await Node.bind(
            bind_key, host=host, port=0, config=config, relay_factory=relay_factory, **relay_kwargs(relays)
        )

    endpoint: Endpoint | None = None
    try:
        if discover:
            near = directory if directory is not None else NodeAddr(key.node_id)
            # an ephemeral identity is random anyway: look up with another one, so that the relay
            # (often the directory too) never sees our node id at the lookup's address as well
            # as at the next endpoint's, which it could take for a move and send there
            lookup_key = SecretKey.generate() if args.key_file is None else key
            endpoint = await bind(near, relay_opt, lookup_key)
            addr = await _discover(endpoint, addr, name, directory, mdns_ifaces, args)
            # bind again, where the node (and the relay its record names) can be reached from
            await endpoint.close()
            endpoint = None
        assert addr is not None
        if endpoint is None:
            endpoint = await bind(addr, relay_opt or ([addr.relay_url] if addr.relay_url else []))
            if tickets is not None:
                _load_session_tickets(endpoint, tickets, verbose=args.verbose)
        if args.verbose:
            where = ", ".join(_fmt_addr(a) for a in addr.direct_addresses) or "(none)"
            relay = f", relay {addr.relay_url}" if addr.relay_url else ""
            _v(f"* peer node {addr.node_id} at {where}{relay}")
            if endpoint.relay is not None:
                _v(f"* our relay {endpoint.relay.relay_url}")
        return await _fetch(endpoint, addr, path, headers, body, args)
    finally:
        if endpoint is not None:
            if tickets is not None:
                _save_session_tickets(endpoint, tickets)
            await endpoint.close()


# -- TLS session tickets kept between runs ----------------------------------------------------


def session_cache_path(node_id: NodeId) -> Path:
    """Where ``get`` keeps the session tickets of identity ``node_id`` between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "asgi-p2p" / "sessions" / f"{node_id}.json"


def network_memory_path(node_id: NodeId) -> Path:
    """Where ``get`` keeps, for identity ``node_id``, the networks where UDP to a relay was blocked."""
    return session_cache_path(node_id).parent.parent / "networks" / f"{node_id}.json"


def _load_session_tickets(endpoint: Endpoint, path: Path, *, verbose: bool) -> None:
    """Hold the tickets an earlier run kept (a file others can read, or a damaged one, is ignored)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("not using session tickets in %s: %s", path, exc)
        return
    if st.st_mode & 0o077:
        log.warning("not using session tickets in %s: accessible by group or others (run `chmod 600 %s`)", path, path)
        return
    try:
        count = endpoint.import_session_tickets(path.read_bytes())
    except (OSError, ValueError) as exc:
        log.warning("not using session tickets in %s: %s", path, exc)
        return
    if verbose:
        _v(f"* {count} TLS session ticket(s) from {path}")


def _save_session_tickets(endpoint: Endpoint, path: Path) -> None:
    """Write the tickets held now (mode 0600, replacing the file atomically); a failure only warns."""
    data = endpoint.export_session_tickets()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not keep session tickets in %s: %s", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()


def _parse_target_or_name(text: str, can_discover: bool) -> tuple[NodeAddr | None, str | None, str]:
    """``(addr, None, path)`` for a ticket or node id, ``(None, name, path)`` for a name."""
    from ..discovery.records import check_name

    try:
        target = parse_target(text)
    except InvalidTicket as original:
        s = text.strip()
        for scheme in ("https://", "http://", "p2p://"):
            if s.lower().startswith(scheme):
                s = s[len(scheme) :]
                break
        cut = min((i for i in (s.find("/"), s.find("?")) if i >= 0), default=len(s))
        head, path = s[:cut], s[cut:]
        try:
            if head.lower().startswith("p2p1"):
                raise ValueError("a damaged ticket, not a name")
            check_name(head)
        except ValueError:
            raise original from None  # not a name either: the ticket / node id error explains it
        if not can_discover:
            raise InvalidTicket(
                f"{head!r} is not a ticket or node id; to look it up as a name, "
                "add --dns-zone ZONE, --directory TICKET or --mdns"
            ) from None
        return None, head, path if path.startswith("/") else "/" + path
    return target.addr, None, target.path


async def _discover(
    endpoint: Endpoint,
    addr: NodeAddr | None,
    name: str | None,
    directory: NodeAddr | None,
    mdns_ifaces: list[str] | None,
    args: argparse.Namespace,
) -> NodeAddr:
    """Resolve a node id or name: what we were given (static), then DNS, the directory, mDNS."""
    from ..discovery import (
        ChainedDiscovery,
        DirectoryClient,
        Discovery,
        DnsDiscovery,
        MdnsDiscovery,
        StaticDiscovery,
    )

    sources: list[Discovery] = []
    if addr is not None:
        sources.append(StaticDiscovery([addr]))
    client: DirectoryClient | None = None
    mdns: MdnsDiscovery | None = None
    loop = asyncio.get_running_loop()
    if args.dns_zone is not None:
        offset = time.time() - loop.time()  # records carry wall-clock expiry times  # wall-clock ok (CLI edge)
        sources.append(
            DnsDiscovery(
                args.dns_zone, nameservers=args.dns_server or None, clock_offset=offset, timeout=min(args.timeout, 5.0)
            )
        )
    if directory is not None:
        offset = time.time() - loop.time()  # records carry wall-clock expiry times  # wall-clock ok (CLI edge)
        client = DirectoryClient(endpoint, directory, clock_offset=offset, timeout=min(args.timeout, 10.0))
        sources.append(client)
    if args.mdns:
        mdns = MdnsDiscovery(interfaces=mdns_ifaces, timeout=min(args.timeout, 3.0))
        sources.append(mdns)
    chain = ChainedDiscovery(sources, timeout=args.timeout)
    what = f"name {name!r}" if name is not None else f"node {addr.node_id if addr else '?'}"
    start = loop.time()
    try:
        if name is not None:
            found = await chain.resolve_name(name)
        else:
            assert addr is not None
            found = await chain.resolve(addr.node_id)
    except DiscoveryFailed as exc:
        raise _Fail(EXIT_RESOLVE, describe_error(exc)) from None
    finally:
        if client is not None:
            await client.close()
        if mdns is not None:
            await mdns.close()
    if args.verbose:
        where = ", ".join(_fmt_addr(a) for a in found.direct_addresses) or "no direct address"
        relay = f", relay {found.relay_url}" if found.relay_url else ""
        _v(f"* resolved {what} to node {found.node_id} ({where}{relay}) in {(loop.time() - start) * 1000:.0f} ms")
    return found


async def _fetch(
    endpoint: Endpoint,
    addr: NodeAddr,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes | None,
    args: argparse.Namespace,
) -> int:
    import httpx

    from ..http import P2PTransport
    from ..http.client import connect_h3

    method = (args.method or ("HEAD" if args.head else "POST" if body is not None else "GET")).upper()
    if body is not None and not any(n.lower() == "content-type" for n, _ in headers):
        headers.append(("content-type", "application/x-www-form-urlencoded"))  # as curl does
    verbose = args.verbose
    url = f"https://{addr.node_id}{path}"
    loop = asyncio.get_running_loop()

    async with AsyncExitStack() as stack:
        transport = P2PTransport(endpoint)
        transport.add_addr(addr)
        client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(args.timeout))
        await stack.enter_async_context(client)
        request = client.build_request(method, url, headers=headers, content=body)

        def failure(exc: httpx.HTTPError) -> _Fail:
            text = _describe_http_error(exc, addr, args.timeout, ephemeral=args.key_file is None)
            return _Fail(_exit_code_for(exc), text)

        start = loop.time()
        # connect first (the request reuses the connection), so that -v sees the path from the start
        try:
            async with asyncio.timeout(args.timeout):
                # with a session ticket from an earlier run, at once: the request goes as 0-RTT data
                await connect_h3(endpoint, addr, early_data=True)
        except (P2PError, TimeoutError) as exc:
            err: httpx.HTTPError
            if isinstance(exc, TimeoutError):
                err = httpx.ConnectTimeout(str(exc) or "connecting to the peer timed out", request=request)
            else:
                err = httpx.ConnectError(str(exc), request=request)
            err.__cause__ = exc
            raise failure(err) from None
        conn = _h3_connection(endpoint, addr.node_id)
        watcher = _PathWatcher(endpoint, conn, start, verbose=verbose)
        stack.callback(watcher.stop)
        if verbose:
            _verbose_connection(endpoint, conn, addr.node_id, loop.time() - start)
            watcher.show()
        watcher.start()
        if args.wait_direct is not None:
            await watcher.wait_direct(args.wait_direct)
        if verbose:
            _v(f"> {method} {path} HTTP/3")
            for name, value in request.headers.multi_items():
                _v(f"> {name}: {value}")
            if body is not None:
                _v(f"> ({len(body)} bytes of body)")

        sent = loop.time()
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise failure(exc) from None
        try:
            if verbose:
                _v(f"* response headers after {(loop.time() - sent) * 1000:.1f} ms")
                _v(f"< HTTP/3 {response.status_code} {response.reason_phrase}")
                for name, value in response.headers.multi_items():
                    _v(f"< {name}: {value}")
            if args.fail and response.status_code >= 400:
                raise _Fail(EXIT_HTTP, f"HTTP {response.status_code} {response.reason_phrase} from {url}")
            out = sys.stdout.buffer
            if args.include or args.head:
                head = [f"HTTP/3 {response.status_code} {response.reason_phrase}".rstrip()]
                head += [f"{n}: {v}" for n, v in response.headers.multi_items()]
                out.write(("\r\n".join(head) + "\r\n\r\n").encode("utf-8", "replace"))
                out.flush()
            if args.output is not None:
                nbytes = await _save(response, args.output, quiet=args.silent)
                if not args.silent:
                    print(f"wrote {nbytes} bytes to {args.output} (HTTP {response.status_code})", file=sys.stderr)
            else:
                await _copy(response, out)
        except httpx.HTTPError as exc:
            raise failure(exc) from None
        finally:
            await response.aclose()
        if verbose:
            _v(f"* done after {(loop.time() - start):.2f} s; path at the end: {watcher.describe()}")
    return 0


def _h3_connection(endpoint: Endpoint, node_id: NodeId) -> PeerConnection | None:
    from ..http import H3_ALPN

    for conn in endpoint.connections:
        if conn.remote_node_id == node_id and conn.alpn == H3_ALPN:
            return conn
    return None


class _PathWatcher:
    """Follows the path of the connection to the peer: prints changes (-v), waits for a direct one."""

    def __init__(self, endpoint: Endpoint, conn: PeerConnection | None, start: float, *, verbose: bool) -> None:
        self.endpoint = endpoint
        self.conn = conn
        self.start_time = start
        self.verbose = verbose
        self.direct = asyncio.Event()
        self._shown: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._check()

    def is_direct(self) -> bool:
        """True once a direct path is confirmed (a probe to it was answered), not merely tried."""
        conn = self.conn
        if conn is None or conn.remote_node_id is None:
            return False
        peer = self.endpoint.peer_paths(conn.remote_node_id)
        if peer is None:  # no paths layer state: the connection's own address is all there is
            return conn.path.kind == "direct" and self.endpoint.relay is None
        return peer.path.kind == "direct" and conn.path.kind == "direct"

    def describe(self) -> str:
        conn = self.conn
        if conn is None:
            return "unknown (connection closed)"
        relay = self.endpoint.relay
        relay_url = relay.relay_url if relay is not None else None
        path = conn.path
        if path.kind == "direct" and not self.is_direct() and relay is not None and relay.can_send:
            # packets go both ways until a probe answers: the relay is what carries them
            assert path.addr is not None
            return f"{fmt_path(PathInfo('relay'), relay_url)} (trying direct {_fmt_addr(path.addr)})"
        return fmt_path(path, relay_url)

    def _key(self) -> str:
        text = self.describe()
        return text.split(" rtt ", 1)[0]  # RTT updates alone are not path changes

    def _check(self) -> None:
        if self.is_direct():
            self.direct.set()

    def show(self, reason: str | None = None) -> None:
        self._shown = self._key()
        if not self.verbose:
            return
        if reason is None:
            _v(f"* path: {self.describe()}")
        else:
            elapsed = asyncio.get_running_loop().time() - self.start_time
            _v(f"* path: {self.describe()} (after {elapsed:.2f} s: {reason})")

    def start(self) -> None:
        if self.conn is not None:
            self._task = asyncio.ensure_future(self._watch(self.conn))

    async def _watch(self, conn: PeerConnection) -> None:
        async for event in conn.path_events():
            self._check()
            if self._key() != self._shown:
                self.show(event.reason)

    async def wait_direct(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a confirmed direct path (then go on either way)."""
        if self.direct.is_set():
            return
        try:
            async with asyncio.timeout(timeout):
                await self.direct.wait()
        except TimeoutError:
            if self.verbose:
                _v(f"* no direct path within {timeout:g} s; sending over {self.describe()}")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def _describe_http_error(exc: BaseException, addr: NodeAddr, timeout: float, *, ephemeral: bool) -> str:
    import httpx

    text = describe_error(exc)
    where = ", ".join(_fmt_addr(a) for a in addr.direct_addresses)
    for cur in _chain(exc):
        if isinstance(cur, AuthenticationFailed):  # the text says who answered, or that we are not allowed
            if ephemeral and "not allowed" in text:
                text += "; this used a new random identity: pass --key-file with a key the node allows"
            return text
    if isinstance(exc, httpx.TimeoutException) and "timeout" not in text.lower() and "timed out" not in text.lower():
        text = f"timed out after {timeout:g}s: {text}"
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)) and str(addr.node_id) not in text:
        text = f"{text} (node {addr.node_id} at {where or 'no address'}; is it running and reachable?)"
    return text


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _fmt_addr(a: tuple[str, int]) -> str:
    return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"


def _v(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _verbose_connection(endpoint: Endpoint, conn: PeerConnection | None, node_id: NodeId, elapsed: float) -> None:
    if conn is not None and conn.early:
        _v(
            f"* resuming the TLS session with node {node_id} (ticket of an earlier mutual-TLS handshake): "
            "a GET, HEAD or OPTIONS goes as 0-RTT early data"
        )
    elif conn is not None:
        relay = endpoint.relay
        ways = [_fmt_addr(conn.direct_address)] if conn.direct_address is not None else []
        if relay is not None:
            ways.append(f"relay {relay.relay_url}")
        _v(
            f"* connected to node {node_id} (dialled {' and '.join(ways)}): ALPN {conn.alpn}, "
            f"rtt {conn.smoothed_rtt * 1000:.2f} ms, identity proven by mutual TLS (Ed25519)"
        )
    else:
        _v(f"* connected to node {node_id}")
    _v(f"* connected after {elapsed * 1000:.1f} ms")


async def _copy(response: httpx.Response, out: IO[bytes]) -> None:
    async for chunk in response.aiter_bytes():
        out.write(chunk)
        out.flush()


async def _save(response: httpx.Response, path: Path, *, quiet: bool) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    total_header = response.headers.get("content-length")
    total = int(total_header) if total_header and total_header.isdigit() else None
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=quiet or not console.is_terminal,
    )
    nbytes = 0
    try:
        f = path.open("wb")
    except OSError as exc:
        raise _Fail(EXIT_ERROR, f"-o {path}: {exc.strerror or exc}") from None
    with f, progress:
        task = progress.add_task(path.name, total=total)
        async for chunk in response.aiter_bytes():
            f.write(chunk)
            nbytes += len(chunk)
            progress.update(task, completed=response.num_bytes_downloaded)
    return nbytes

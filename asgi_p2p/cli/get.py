"""``asgi-p2p get TICKET_OR_NODE[/path]``: curl for peers.

Exit status (as curl's where they overlap): 0 on any HTTP response (unless
``-f``), 22 for an HTTP status >= 400 with ``-f``, 7 when the peer cannot be
reached or authenticated, 23 when stdout closes early, 28 on timeout, 1 for
anything else (bad arguments, unreadable files, protocol errors).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ..config import NetworkConfig
from ..errors import (
    AuthenticationFailed,
    ConnectionFailed,
    NodeNotFound,
    NoRoute,
    P2PError,
    Timeout,
)
from ..identity import NodeAddr, NodeId, SecretKey
from ..ticket import parse_target
from ._common import LOG_LEVELS, configure_logging, describe_error, host_port, positive_float, require_http

if TYPE_CHECKING:
    import httpx

    from ..endpoint import Endpoint

__all__ = ["add_get_args", "run_get"]

log = logging.getLogger("asgi_p2p.cli")

EXIT_ERROR = 1
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
    p.add_argument("--log-level", choices=list(LOG_LEVELS), default="warning", help="log level (default: warning)")


class _Fail(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def run_get(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
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


def _bind_host(addr: NodeAddr) -> str:
    """A local address from which the node's first direct address is reachable."""
    if not addr.direct_addresses:
        return "0.0.0.0"
    host = addr.direct_addresses[0][0]
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return "localhost" if host == "localhost" else "0.0.0.0"
    if ip.version == 6:
        return "::1" if ip.is_loopback else "::"
    return "127.0.0.1" if ip.is_loopback else "0.0.0.0"


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
    import httpx

    from ..endpoint import Endpoint
    from ..http import P2PTransport

    target = parse_target(args.target)
    addr = target.addr
    if args.addr:
        addr = NodeAddr(addr.node_id, [*args.addr, *addr.direct_addresses], addr.relay_url)
    if not addr.direct_addresses and addr.relay_url is None:
        raise NodeNotFound(
            f"no address known for node {addr.node_id}; use its ticket (p2p1..., printed by `asgi-p2p serve`) "
            "or add --addr HOST:PORT"
        )
    headers = _parse_headers(args.headers)
    body = _read_data(args.data)
    method = (args.method or ("HEAD" if args.head else "POST" if body is not None else "GET")).upper()
    if body is not None and not any(n.lower() == "content-type" for n, _ in headers):
        headers.append(("content-type", "application/x-www-form-urlencoded"))  # as curl does
    key = SecretKey.load(args.key_file) if args.key_file is not None else SecretKey.generate()
    base = NetworkConfig.from_env()
    config = base.replace(connect_timeout=min(base.connect_timeout, args.timeout))
    verbose = args.verbose
    url = f"https://{addr.node_id}{target.path}"

    if verbose:
        kind = f"key {args.key_file}" if args.key_file else "ephemeral key"
        _v(f"* local node {key.node_id} ({kind})")
        where = ", ".join(_fmt_addr(a) for a in addr.direct_addresses) or "(none)"
        relay = f", relay {addr.relay_url}" if addr.relay_url else ""
        _v(f"* peer node {addr.node_id} at {where}{relay}")

    async with AsyncExitStack() as stack:
        endpoint = await Endpoint.bind(key, host=args.bind or _bind_host(addr), port=0, config=config)
        stack.push_async_callback(endpoint.close)
        transport = P2PTransport(endpoint)
        transport.add_addr(addr)
        client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(args.timeout))
        await stack.enter_async_context(client)
        request = client.build_request(method, url, headers=headers, content=body)
        if verbose:
            _v(f"> {method} {target.path} HTTP/3")
            for name, value in request.headers.multi_items():
                _v(f"> {name}: {value}")
            if body is not None:
                _v(f"> ({len(body)} bytes of body)")

        def failure(exc: httpx.HTTPError) -> _Fail:
            text = _describe_http_error(exc, addr, args.timeout, ephemeral=args.key_file is None)
            return _Fail(_exit_code_for(exc), text)

        start = asyncio.get_running_loop().time()
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise failure(exc) from None
        try:
            if verbose:
                _verbose_connection(endpoint, addr.node_id, asyncio.get_running_loop().time() - start)
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
    return 0


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
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)) and addr.node_id.fmt_short() not in text:
        text = f"{text} (node {addr.node_id.fmt_short()} at {where or 'no address'}; is it running and reachable?)"
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


def _verbose_connection(endpoint: Endpoint, node_id: NodeId, elapsed: float) -> None:
    for conn in endpoint.connections:
        if conn.remote_node_id == node_id:
            _v(
                f"* connected to node {node_id} at {_fmt_addr(conn.address)}: ALPN {conn.alpn}, "
                f"rtt {conn.smoothed_rtt * 1000:.2f} ms, identity proven by mutual TLS (Ed25519)"
            )
            break
    else:
        _v(f"* connected to node {node_id}")
    _v(f"* response headers after {elapsed * 1000:.1f} ms")


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

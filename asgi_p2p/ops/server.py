"""The metrics listener: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz`` on a local TCP address.

It runs on the node's own event loop (``asyncio.start_server``), so a scrape reads the
counters between two events, never while a layer changes them.  It speaks just enough
HTTP/1.1 for Prometheus, curl and load balancers: ``GET`` or ``HEAD``, one request per
connection, a bounded request head read within a timeout, at most
:data:`MAX_CLIENTS` connections at once.

::

    metrics = await start_metrics_server("127.0.0.1:9464", endpoint=node, http=server)
    ...
    await metrics.close()

The address must be a loopback one unless ``allow_public=True``: metrics name the
node's traffic and limits, which is nobody else's business by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.process_collector import ProcessCollector

from ..errors import InvalidConfiguration
from .metrics import HttpMetrics, HttpServerCollector, NodeCollector, RelayServerCollector

if TYPE_CHECKING:
    from ..endpoint.endpoint import Endpoint
    from ..http.server import H3Server
    from ..relay.server import RelayServer

__all__ = ["MAX_CLIENTS", "Health", "MetricsServer", "parse_listen_address", "start_metrics_server"]

log = logging.getLogger("asgi_p2p.ops")

#: connections the listener serves at once; more are closed at once
MAX_CLIENTS = 16
#: seconds a client has to send its request head
REQUEST_TIMEOUT = 5.0
#: the largest request head read (request line and headers)
MAX_REQUEST_HEAD = 8192

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def parse_listen_address(text: str, *, allow_public: bool = False, option: str = "--metrics") -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` as (host, port); a non-loopback host only if ``allow_public``.

    ``localhost`` counts as loopback; any other name, or an address that is not a
    loopback one (``0.0.0.0`` included), needs ``allow_public``.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise InvalidConfiguration(f"{option}: expected HOST:PORT (like 127.0.0.1:9464), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise InvalidConfiguration(f"{option}: write an IPv6 address in brackets, like [::1]:9464, got {text!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise InvalidConfiguration(f"{option}: port must be a number in 0..65535, got {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise InvalidConfiguration(f"{option}: port must be in 0..65535, got {port}")
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback and not allow_public:
            raise InvalidConfiguration(
                f"{option}: {host} is not a loopback address; metrics would be served to the network. "
                "Add --metrics-allow-public to mean it (and firewall the port)"
            )
    return host, port


@dataclass
class Health:
    """Readiness checks: each a name and a function that is true while the check passes.

    ``/healthz`` answers 200 while the process serves at all (liveness); ``/readyz``
    answers 200 when every check passes, else 503 naming the failing ones.
    """

    checks: list[tuple[str, Callable[[], bool]]] = field(default_factory=list)

    def add(self, name: str, check: Callable[[], bool]) -> None:
        self.checks.append((name, check))

    def failing(self) -> list[str]:
        """The names of the checks that do not pass now (a check that raises fails)."""
        failed = []
        for name, check in self.checks:
            try:
                ok = bool(check())
            except Exception:
                ok = False
            if not ok:
                failed.append(name)
        return failed

    def report(self) -> tuple[bool, str]:
        """(ready, one line per check: ``ok NAME`` or ``failed NAME``)."""
        failing = set(self.failing())
        lines = [f"{'failed' if name in failing else 'ok'} {name}" for name, _ in self.checks]
        return not failing, "\n".join(lines) + "\n"


class MetricsServer:
    """A running metrics listener (see the module docstring); :meth:`close` stops it."""

    def __init__(self, registry: CollectorRegistry, health: Health) -> None:
        self.registry = registry
        self.health = health
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        try:
            self._server = await asyncio.start_server(self._connected, host, port, limit=MAX_REQUEST_HEAD)
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise InvalidConfiguration(f"--metrics: cannot listen on {host}:{port}: {why}") from None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the listener is bound to (its first socket)."""
        assert self._server is not None and self._server.sockets
        addr = self._server.sockets[0].getsockname()
        return addr[0], addr[1]

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._clients) >= MAX_CLIENTS:
            writer.close()
            return
        self._clients.add(task)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            status, ctype, body, head_only = self._answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        finally:
            self._clients.discard(task)
        reason = _REASONS.get(status, "")
        lines = [
            f"HTTP/1.1 {status} {reason}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
            "Connection: close",
            "",
            "",
        ]
        try:
            writer.write("\r\n".join(lines).encode("latin-1") + (b"" if head_only else body))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _answer(self, head: bytes) -> tuple[int, str, bytes, bool]:
        text = "text/plain; charset=utf-8"
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return 400, text, b"bad request\n", False
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return 405, text, b"only GET and HEAD\n", False
        head_only = method == b"HEAD"
        if target == b"/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry), head_only
        if target == b"/healthz":
            return 200, text, b"ok\n", head_only
        if target == b"/readyz":
            ready, report = self.health.report()
            return (200 if ready else 503), text, report.encode(), head_only
        return 404, text, b"not found: try /metrics, /healthz or /readyz\n", head_only


async def start_metrics_server(
    address: str | tuple[str, int],
    *,
    allow_public: bool = False,
    endpoint: Endpoint | None = None,
    http: H3Server | None = None,
    relay: RelayServer | None = None,
    registry: CollectorRegistry | None = None,
    checks: Iterable[tuple[str, Callable[[], bool]]] = (),
) -> MetricsServer:
    """Serve metrics of ``endpoint``, ``http`` and ``relay`` (any of them) at ``address``.

    ``address`` is ``"HOST:PORT"`` or (host, port); a non-loopback host needs
    ``allow_public``.  Readiness (``/readyz``) checks that the endpoint's socket is
    bound and open, that the HTTP server's lifespan startup completed, that the
    endpoint's relay is connected when it has one, plus ``checks``.  The registry
    also holds the process metrics (CPU, memory, open files).
    """
    if isinstance(address, str):
        host, port = parse_listen_address(address, allow_public=allow_public)
    else:
        host, port = parse_listen_address(f"[{address[0]}]:{address[1]}", allow_public=allow_public)
    if registry is None:
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
    health = Health()
    if relay is not None:
        registry.register(RelayServerCollector(relay))
        endpoint = endpoint or relay.endpoint
    if endpoint is not None:
        registry.register(NodeCollector(endpoint))
        ep = endpoint
        health.add("socket bound", lambda: not ep.closing and ep.local_address is not None)
        if ep.relay is not None:
            link = ep.relay
            health.add(f"relay {link.relay_url} connected", lambda: link.connected)
    if http is not None:
        registry.register(HttpServerCollector(http))
        HttpMetrics(registry).observe(http)
        server = http
        health.add("lifespan started", lambda: server.serving)
    for name, check in checks:
        health.add(name, check)
    metrics = MetricsServer(registry, health)
    await metrics.start(host, port)
    log.info("metrics on %s/metrics (health: /healthz, /readyz)", metrics.url)
    return metrics

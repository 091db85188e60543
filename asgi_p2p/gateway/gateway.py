"""The gateway: browsers, curl and any HTTP/1.1 client reach peers through it.

:class:`Gateway` is an ASGI app; :class:`GatewayServer` serves it with uvicorn
(HTTP/1.1 parsed by httptools, keep-alive, optionally TLS).  Each request goes to a
peer as one HTTP/3 request stream on the gateway node's pooled connection to it
(:class:`~asgi_p2p.http.client.ClientStream`, built straight from the ASGI scope); the
node dials with the gateway's own key, so the peer's allow-list decides whether the
gateway may call it.  A request whose pooled connection turns out dead before any
response is sent again on a new one when that is safe, as :class:`~asgi_p2p.http.P2PTransport`
does.  Bodies stream both ways and nothing is buffered beyond the QUIC
stream window and uvicorn's flow control: a client or peer that reads slowly
slows the other side down instead of filling memory.  A WebSocket upgrade on the
HTTP/1.1 side becomes an RFC 9220 extended CONNECT to the peer.

Which peer a request goes to (:class:`Routing`)::

    one fixed node (a ticket)      every request, whatever its Host header
    host style                     http://<node-id>.localhost:8080/path  (or <name>.localhost)
    path style                     https://gw.example/<node-id>/path

A request that names no node, or a node the operator did not route to (``only``),
is answered by the gateway itself (404 or 502); it never reaches a peer.  Failing
to reach the named node is a 502 whose body says why: ``unreachable``, ``not
allowed`` or ``no such name``.

The gateway keeps no per-node state beyond the node's live QUIC connections
(and a bounded cache of name lookups).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .. import aioquic_compat as hooks
from ..endpoint.endpoint import Endpoint
from ..errors import AuthenticationFailed, DiscoveryFailed, InvalidNodeId, NodeNotFound, P2PError
from ..errors import StreamReset as StreamResetError
from ..http import (
    H3_ALPN,
    Headers,
    WebSocketDisconnect,
    WebSocketRejected,
    WebSocketSession,
    clean_header_fields,
    websocket_connect,
)
from ..http.client import IDEMPOTENT_METHODS, ClientConnection, ClientStream, PeerGoingAway, connect_h3
from ..identity import NodeAddr, NodeId

__all__ = [
    "NAME_CACHE_SIZE",
    "Gateway",
    "GatewayServer",
    "Lookup",
    "RouteError",
    "Routing",
    "is_loopback",
]

log = logging.getLogger("asgi_p2p.gateway")

#: Names (``music.home.localhost``) whose node id the gateway remembers; the oldest goes first.
NAME_CACHE_SIZE = 256
#: How long a name's node id is remembered (seconds, loop time).
NAME_CACHE_TTL = 60.0

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: RFC 9110 7.6.1 hop-by-hop fields (plus the ones a Connection header names): never forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
    }
)
#: Set by the gateway (whatever the client sent under these names is dropped: it could be forged).
FORWARDING = frozenset({b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto"})
_NOT_FORWARDED = HOP_BY_HOP | FORWARDING
#: The HTTP/1.1 WebSocket handshake's own fields (RFC 6455): RFC 9220 carries none of them.
WS_HANDSHAKE = frozenset(
    {b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions", b"sec-websocket-protocol"}
)

#: RFC 9114 H3_NO_ERROR: closes the opt-in probe's connection
H3_NO_ERROR = 0x100

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


class Lookup(Protocol):
    """Where node ids and names are looked up (e.g. :class:`~asgi_p2p.discovery.ChainedDiscovery`)."""

    async def resolve(self, node_id: NodeId) -> NodeAddr: ...

    async def resolve_name(self, name: str) -> NodeAddr: ...


class RouteError(Exception):
    """The gateway answers the request itself: ``status`` with ``reason`` (and ``detail``) in the body."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        self.status = status
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def body(self) -> bytes:
        text = f"asgi-p2p gateway: {self.reason}" + (f": {self.detail}" if self.detail else "")
        return (text + "\n").encode("utf-8", "replace")


def is_loopback(host: str) -> bool:
    """``host`` (an address or ``localhost``) only accepts connections from this machine."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Routing:
    """Which peer a request goes to.

    ``target``: every request goes to this node (the Host header is not looked at).
    Otherwise the node is named by the request: by the first label of the Host
    header under one of ``host_suffixes`` (``<node>.localhost``), and with
    ``path_style`` by the first path segment (``/<node>/rest``; the peer sees
    ``/rest`` and an ``x-forwarded-prefix`` header).  A node is a node id, or a
    name looked up by the gateway's :class:`Lookup`.  ``only``: the node ids the
    operator routes to (None: any node that accepts the gateway's node id).
    """

    target: NodeAddr | None = None
    host_suffixes: tuple[str, ...] = ("localhost",)
    path_style: bool = False
    only: frozenset[NodeId] | None = None

    def __post_init__(self) -> None:
        for suffix in self.host_suffixes:
            labels = suffix.split(".")
            if not suffix or not all(_LABEL.match(label) for label in labels):
                raise ValueError(f"invalid host suffix {suffix!r}: expected lower-case DNS labels like gw.example")
        if self.target is not None and self.only is not None and self.target.node_id not in self.only:
            raise ValueError("the fixed target is not one of the routed-to node ids")

    def describe(self) -> str:
        if self.target is not None:
            return f"node {self.target.node_id}"
        ways = [f"http://<node>.{s}/" for s in self.host_suffixes]
        if self.path_style:
            ways.append("/<node>/...")
        return " or ".join(ways)


@dataclass
class _Route:
    node: NodeId | str  # a node id, or a name to look up
    path: bytes  # the raw path (and query) to send to the peer
    prefix: str  # the path prefix the gateway took away ("" in host style)


class Gateway:
    """An ASGI app forwarding every request to a peer over HTTP/3 (see the module docstring).

    ``lookup`` finds node ids' addresses and names' nodes (without one, node ids
    are dialled through the node's relay, and names are not known).
    ``opt_in_probe``: an endpoint with a throwaway key (a public gateway's): before
    the first connection to a node, it dials the node too, and a node that lets it
    in accepts any caller, so it did not opt in to this gateway: 502 ``not opted in``.
    ``connect_timeout``: reaching the peer; ``response_timeout``: its response
    headers (None: no limit; bodies are never timed out: they may be long streams).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        routing: Routing,
        *,
        lookup: Lookup | None = None,
        connect_timeout: float = 10.0,
        response_timeout: float | None = 60.0,
        scheme: str = "http",
        opt_in_probe: Endpoint | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.opt_in_probe = opt_in_probe
        self.routing = routing
        self.lookup = lookup
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.scheme = scheme
        self._names: OrderedDict[str, tuple[NodeId, float]] = OrderedDict()
        self._authorities: dict[NodeId, bytes] = {}

    # -- routing ------------------------------------------------------------------------

    def route(self, scope: Scope) -> _Route:
        """The node and path of a request (raises :class:`RouteError` for one the gateway answers itself)."""
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        if not raw_path.startswith(b"/"):  # absolute-form (http://other/...) or asterisk-form targets
            raise RouteError(400, "bad request target", "expected a path starting with /")
        query: bytes = scope.get("query_string", b"")
        target = raw_path + (b"?" + query if query else b"")
        routing = self.routing
        if routing.target is not None:
            return _Route(routing.target.node_id, target, "")
        host = _host_of(scope)
        for suffix in routing.host_suffixes:
            if host.endswith("." + suffix):
                label = host[: -len(suffix) - 1]
                return _Route(self._node(label), target, "")
        if routing.path_style:
            segment, sep, rest = raw_path[1:].partition(b"/")
            if segment:
                node = self._node(segment.decode("latin-1").lower())
                if not sep:
                    raise RouteError(308, "redirect", f"/{segment.decode('latin-1')}/")
                rest_target = b"/" + rest + (b"?" + query if query else b"")
                return _Route(node, rest_target, "/" + segment.decode("latin-1"))
        raise RouteError(404, "no node named", f"this gateway reaches nodes as {routing.describe()}")

    def _node(self, label: str) -> NodeId | str:
        try:
            node_id = NodeId.parse(label)
        except (InvalidNodeId, ValueError):
            from ..discovery.records import check_name

            try:
                check_name(label)
            except ValueError:
                raise RouteError(502, "no such name", f"{label!r} is neither a node id nor a name") from None
            return label
        only = self.routing.only
        if only is not None and node_id not in only:
            raise RouteError(502, "not routed", f"this gateway does not route to node {node_id}")
        return node_id

    async def _resolve(self, node: NodeId | str) -> NodeAddr | NodeId:
        """Where to dial: the fixed target, a live connection's node id, or a lookup."""
        target = self.routing.target
        if target is not None:
            if target.direct_addresses or target.relay_url is not None or self.lookup is None:
                return target
            node = target.node_id  # a bare node id: look its address up like any other
        loop = asyncio.get_running_loop()
        if isinstance(node, str):
            cached = self._names.get(node)
            if cached is not None and cached[1] > loop.time():
                node_id: NodeId = cached[0]
            else:
                if self.lookup is None:
                    raise RouteError(502, "no such name", f"{node!r} (this gateway has no discovery to look names up)")
                try:
                    addr = await self.lookup.resolve_name(node)
                except (DiscoveryFailed, NodeNotFound) as exc:
                    raise RouteError(502, "no such name", f"{node!r}: {_one_line(exc)}") from None
                only = self.routing.only
                if only is not None and addr.node_id not in only:
                    raise RouteError(502, "not routed", f"{node!r} is node {addr.node_id}, not routed to here")
                self._names[node] = (addr.node_id, loop.time() + NAME_CACHE_TTL)
                self._names.move_to_end(node)
                while len(self._names) > NAME_CACHE_SIZE:
                    self._names.popitem(last=False)
                if not self._live(addr.node_id):
                    return addr
                return addr.node_id
        else:
            node_id = node
        if self._live(node_id) or self.lookup is None:
            return node_id  # the pooled connection, or the relay
        try:
            return await self.lookup.resolve(node_id)
        except (DiscoveryFailed, NodeNotFound) as exc:
            if self.endpoint.relay is not None:
                return node_id  # the relay may still know it
            raise RouteError(502, "unreachable", f"node {node_id}: {_one_line(exc)}") from None

    def _live(self, node_id: NodeId) -> bool:
        return any(
            c.remote_node_id == node_id and c.alpn == H3_ALPN and not c.closed for c in self.endpoint.connections
        )

    def _pooled(self, node_id: NodeId) -> ClientConnection | None:
        """The node's HTTP/3 client connection, if one is confirmed and takes requests."""
        for c in self.endpoint.connections:
            if c.remote_node_id == node_id and c.alpn == H3_ALPN and not c.closed and c.established_at is not None:
                handler = c.handler
                if isinstance(handler, ClientConnection) and handler.lost is None and not handler.draining:
                    return handler
        return None

    async def _connect_h3(self, node: NodeId | str) -> tuple[ClientConnection, bool]:
        """The HTTP/3 connection to the node (resolving and dialing unless one is live), and
        whether it was live already (pooled: it may turn out dead, see :meth:`_exchange`)."""
        target = self.routing.target
        node_id = target.node_id if target is not None else node
        if isinstance(node_id, NodeId):
            pooled = self._pooled(node_id)
            if pooled is not None:
                return pooled, True  # the common case: nothing to look up or dial
        try:
            async with asyncio.timeout(self.connect_timeout):
                addr = await self._resolve(node)
                if self.opt_in_probe is not None and not self._live(_node_id_of(addr)):
                    await self._check_opt_in(addr)
                cc = await connect_h3(self.endpoint, addr)
        except TimeoutError:
            raise RouteError(502, "unreachable", f"node {node}: no answer within {self.connect_timeout:g} s") from None
        except AuthenticationFailed as exc:
            raise self._refused(node, exc) from None
        except P2PError as exc:
            raise RouteError(502, "unreachable", f"node {node}: {_one_line(exc)}") from None
        return cc, False

    async def _connect(self, node: NodeId | str) -> NodeId:
        """Resolve and connect (the request then reuses the pooled connection)."""
        cc, _ = await self._connect_h3(node)
        remote = cc.conn.remote_node_id
        assert remote is not None
        return remote

    async def _check_opt_in(self, addr: NodeAddr | NodeId) -> None:
        """Raise 502 ``not opted in`` if the node lets a random node id in (see ``opt_in_probe``)."""
        probe = self.opt_in_probe
        assert probe is not None
        node_id = _node_id_of(addr)
        try:
            cc = await connect_h3(probe, addr)
            # connect_h3 returns once our Finished is sent; whether the node accepted the
            # probe is known only when the handshake is confirmed (or refused)
            await cc.conn.wait_ready(probe.config.connect_timeout, confirmed=True)
        except AuthenticationFailed as exc:
            if "not allowed" in _one_line(exc):
                return  # the node restricts its callers: it listed this gateway (or refuses it next)
            raise
        cc.conn.close(H3_NO_ERROR, "opt-in probe")
        raise RouteError(
            502,
            "not opted in",
            f"node {node_id} accepts any caller, so it has not opted in; a node opts in to this public gateway "
            f"by allowing listed node ids only (--allow), this gateway's {self.endpoint.node_id} among them",
        )

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    def _forward_headers(
        self, scope: Scope, route: _Route, drop: frozenset[bytes] = frozenset()
    ) -> list[tuple[bytes, bytes]]:
        raw: list[tuple[bytes, bytes]] = list(scope.get("headers", ()))
        named = {
            n.strip().lower().encode()
            for k, v in raw
            if k.lower() == b"connection"
            for n in v.decode("latin-1").split(",")
        }
        skip = _NOT_FORWARDED | drop | named if named or drop else _NOT_FORWARDED
        out = [(k, v) for k, v in raw if k.lower() not in skip]
        client = scope.get("client")
        host = _host_of(scope)
        parts = []
        if client:
            addr = client[0]
            parts.append(f'for="[{addr}]:{client[1]}"' if ":" in addr else f'for="{addr}:{client[1]}"')
        if host:
            parts.append(f'host="{host}"')
        parts.append(f"proto={self.scheme}")
        out.append((b"forwarded", ";".join(parts).encode("latin-1")))
        if route.prefix:
            out.append((b"x-forwarded-prefix", route.prefix.encode("latin-1")))
        return out

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            route = self.route(scope)
            cc, pooled = await self._connect_h3(route.node)
        except RouteError as err:
            await _drain_request(receive)
            await _answer(send, err)
            if err.status >= 500:
                log.warning("%s %s: %s", scope["method"], scope["path"], err)
            return
        node_id = cc.conn.remote_node_id
        assert node_id is not None
        method: str = scope["method"]
        fields: Headers = [
            (b":method", method.encode("latin-1")),
            (b":scheme", b"https"),
            (b":authority", self._authority(node_id)),
            (b":path", route.path),
        ]
        fields += clean_header_fields(self._forward_headers(scope, route), log.warning)
        has_body = False  # a body to forward: chunked, or a length other than 0
        for k, v in scope.get("headers", ()):
            k = k.lower()
            if k == b"transfer-encoding" or (k == b"content-length" and v.strip() != b"0"):
                has_body = True
        body = _Body(receive) if has_body else None
        try:
            try:
                st = await self._exchange(cc, fields, body, may_retry=pooled)
            except _Retry as retry:
                # the pooled connection was dead before any response: once more on a new one
                log.info(
                    "%s %s: the connection to %s failed before any response (%s); retrying on a new connection",
                    method,
                    scope["path"],
                    node_id,
                    _one_line(retry.cause),
                )
                cc, _ = await self._connect_h3(route.node)
                st = await self._exchange(cc, fields, body, may_retry=False)
        except RouteError as err:
            await _answer(send, err)
            log.warning("%s %s: %s", method, scope["path"], err)
            return
        except _ClientGone:
            log.info("%s %s: the client went away while sending the request body", method, scope["path"])
            return
        await self._relay_response(scope, receive, send, st, node_id)

    def _authority(self, node_id: NodeId) -> bytes:
        """The ``:authority`` of requests to the node: its id (the text remembered for a few nodes)."""
        text = self._authorities.get(node_id)
        if text is None:
            if len(self._authorities) >= NAME_CACHE_SIZE:
                self._authorities.clear()
            text = self._authorities[node_id] = str(node_id).encode()
        return text

    async def _exchange(
        self, cc: ClientConnection, fields: Headers, body: _Body | None, *, may_retry: bool
    ) -> ClientStream:
        """Send the request on ``cc`` and wait for its response headers (``response_timeout``).

        Raises :class:`RouteError` (502, 504), :class:`_ClientGone`, or :class:`_Retry` when
        ``may_retry`` and the connection turned out dead before any response, with the request
        safe to send again (an idempotent method or nothing of it sent, and no body read yet).
        """
        node_id = cc.conn.remote_node_id
        try:
            st = cc.open_stream()
        except P2PError as exc:
            if may_retry and (exc is cc.lost or isinstance(exc, PeerGoingAway)):
                raise _Retry(exc) from exc
            raise RouteError(502, "unreachable", f"node {node_id}: {_one_line(exc)}") from None
        try:
            try:
                await _send_request(st, fields, body)
                async with asyncio.timeout(self.response_timeout):
                    await st.wait_headers()
            except TimeoutError:
                raise RouteError(
                    504, "peer too slow", f"node {node_id}: no response within {self.response_timeout:g} s"
                ) from None
            except P2PError as exc:
                lost = cc.lost
                if lost is not None and not cc.conn.is_confirmed and not st.response_started:
                    # sent with our TLS Finished: the peer refused the connection (its allow-list) or is gone
                    raise self._refused(node_id, lost) from None
                method = fields[0][1].decode("latin-1")
                if (
                    may_retry
                    and lost is not None
                    and not st.response_started
                    and (body is None or not body.started)
                    and (st.never_sent or method in IDEMPOTENT_METHODS)
                ):
                    raise _Retry(lost) from exc
                raise RouteError(502, "unreachable", f"node {node_id}: {_describe(exc)}") from None
        except BaseException:
            st.cancel()
            raise
        return st

    def _refused(self, node: object, exc: P2PError) -> RouteError:
        text = _one_line(exc)
        if isinstance(exc, AuthenticationFailed) and "not allowed" in text:
            return RouteError(
                502, "not allowed", f"node {node} does not allow this gateway's node id {self.endpoint.node_id}"
            )
        return RouteError(502, "unreachable", f"node {node}: {text}")

    async def _relay_response(
        self, scope: Scope, receive: Receive, send: Send, st: ClientStream, node_id: NodeId
    ) -> None:
        fields = st.headers
        named = {
            n.strip().lower().encode() for k, v in fields if k == b"connection" for n in v.decode("latin-1").split(",")
        }
        out = [(k, v) for k, v in fields if k not in HOP_BY_HOP and k not in named]
        assert st.status is not None
        # the client going away ends the exchange with the peer at once (no reading a long body for nobody);
        # watched while waiting for the peer (a small response is over before a watcher would pay off)
        gone: asyncio.Future[None] | None = None
        try:
            await send({"type": "http.response.start", "status": st.status, "headers": out})
            while True:
                chunk = st.read_nowait()
                if chunk is None:
                    if gone is None:
                        gone = asyncio.ensure_future(_wait_disconnect(receive))
                    nxt: asyncio.Future[bytes] = asyncio.ensure_future(st.read())
                    waiting: set[asyncio.Future[Any]] = {nxt, gone}
                    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    if nxt not in done:
                        nxt.cancel()
                        with contextlib.suppress(BaseException):
                            await nxt
                        log.debug(
                            "%s %s: the client went away; cancelled the request to %s",
                            scope["method"],
                            scope["path"],
                            node_id,
                        )
                        return
                    chunk = nxt.result()
                if not chunk:
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            _ack_with_next_request(st)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except P2PError as exc:
            # mid-body: the response cannot be turned into an error any more; uvicorn cuts the connection
            log.warning("%s %s: node %s: response cut off: %s", scope["method"], scope["path"], node_id, exc)
        finally:
            if gone is not None:
                gone.cancel()
            if st.finished or st.error is not None:
                st.close()
            else:
                st.cancel()

    # -- WebSocket -------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        try:
            route = self.route(scope)
            node_id = await self._connect(route.node)
        except RouteError as err:
            await _deny(scope, send, err)
            return
        headers = self._forward_headers(scope, route, drop=WS_HANDSHAKE)
        subprotocols: list[str] = list(scope.get("subprotocols") or ())
        try:
            async with websocket_connect(
                self.endpoint,
                node_id,
                route.path.decode("latin-1"),
                subprotocols=subprotocols,
                headers=headers,
                timeout=self.connect_timeout,
            ) as session:
                await send({"type": "websocket.accept", "subprotocol": session.subprotocol})
                await _pump_websocket(receive, send, session)
        except WebSocketRejected as exc:
            if "websocket.http.response" in (scope.get("extensions") or {}):
                fields = [(k, v) for k, v in exc.headers if k.lower() not in HOP_BY_HOP and k != b"content-length"]
                await send({"type": "websocket.http.response.start", "status": exc.status, "headers": fields})
                await send({"type": "websocket.http.response.body", "body": exc.body})
            else:
                await send({"type": "websocket.close", "code": 1008})
        except (P2PError, TimeoutError) as exc:
            log.info("websocket %s to node %s: %s", scope["path"], node_id, _one_line(exc))
            await _deny(scope, send, RouteError(502, "unreachable", f"node {node_id}: {_one_line(exc)}"))


class _ClientGone(Exception):
    """The HTTP client disconnected before its request body was complete."""


class _Retry(Exception):
    """The pooled connection was dead before any response; the request may be sent again."""

    def __init__(self, cause: P2PError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Body:
    """The client's request body, read from ASGI ``receive`` as the peer takes it (no buffering ahead)."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        #: a chunk was read (the body cannot be sent again)
        self.started = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            message = await self._receive()
            self.started = True
            if message["type"] == "http.disconnect":
                raise _ClientGone("the client went away while sending the request body")
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return


async def _send_request(st: ClientStream, fields: Headers, body: _Body | None) -> None:
    """The request's HEADERS, then its body as the client sends it (each write waits for flow control)."""
    if body is None:
        st.send_headers(fields, True)
        return
    st.send_headers(fields, False)
    try:
        async for chunk in body:
            await st.write(chunk, False)
        await st.write(b"", True)
    except StreamResetError:
        # the peer stopped reading the request (an early response such as 413): read the response
        if st.error is not None and not isinstance(st.error, StreamResetError):
            raise st.error from None
    except _ClientGone:
        st.cancel()
        raise


#: how long the ACK of a response may wait for the next request (seconds; aioquic's max_ack_delay is 25 ms)
ACK_WAIT = 0.015


def _ack_with_next_request(st: ClientStream) -> None:
    """The whole response is in and no other request is under way on the connection: its ACK waits
    (:data:`ACK_WAIT`) for the next request to carry it, instead of leaving alone 1 ms from now.

    An HTTP/1.1 client sends its next request on a kept-alive connection after reading this
    response, a millisecond or two later: one packet to send and for the peer to take, not two.
    """
    cc = st.cc
    if len(cc.streams) <= 1 and st.ended and cc.lost is None:
        hooks.postpone_ack(cc.conn.quic, cc.loop.time() + ACK_WAIT)


def _describe(exc: P2PError) -> str:
    """Why an exchange with the peer failed, on one line."""
    if isinstance(exc, StreamResetError):
        return f"the peer reset the HTTP/3 stream (error code {exc.error_code:#x})"
    return _one_line(exc)


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _drain_request(receive: Receive) -> None:
    """Read (and drop) a request body the gateway answers itself, up to 1 MiB; larger: the connection closes."""
    total = 0
    while total <= 1 << 20:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        total += len(message.get("body", b""))


async def _answer(send: Send, err: RouteError) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store")]
    body = err.body()
    if err.status in (301, 302, 307, 308):
        headers.append((b"location", err.detail.encode("latin-1")))
        body = b""
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _deny(scope: Scope, send: Send, err: RouteError) -> None:
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await send(
            {
                "type": "websocket.http.response.start",
                "status": err.status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": err.body()})
    else:
        await send({"type": "websocket.close", "code": 1014})  # bad gateway


async def _pump_websocket(receive: Receive, send: Send, session: WebSocketSession) -> None:
    """Messages both ways, one at a time each way, until either side closes."""

    async def to_peer() -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.receive":
                text = message.get("text")
                await session.send(text if text is not None else bytes(message.get("bytes") or b""))
            elif message["type"] == "websocket.disconnect":
                with contextlib.suppress(P2PError):
                    await session.close(int(message.get("code") or 1000))
                return

    async def to_client() -> None:
        while True:
            try:
                data = await session.receive()
            except WebSocketDisconnect as exc:
                code = exc.code if exc.code not in (1005, 1006) else 1011 if exc.code == 1006 else 1000
                with contextlib.suppress(Exception):
                    await send({"type": "websocket.close", "code": code, "reason": exc.reason[:120]})
                return
            if isinstance(data, str):
                await send({"type": "websocket.send", "text": data})
            else:
                await send({"type": "websocket.send", "bytes": data})

    tasks = [asyncio.ensure_future(to_peer()), asyncio.ensure_future(to_client())]
    try:
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
    for task in done:
        exc = task.exception()
        if exc is not None and not isinstance(exc, (P2PError, OSError)):
            raise exc


def _node_id_of(addr: NodeAddr | NodeId) -> NodeId:
    return addr.node_id if isinstance(addr, NodeAddr) else addr


def _host_of(scope: Scope) -> str:
    """The request's Host header, lower-case, without the port ('' if absent)."""
    for name, value in scope.get("headers", ()):
        if name == b"host":
            host: str = bytes(value).decode("latin-1").strip().lower()
            if host.startswith("["):
                return host.split("]", 1)[0] + "]"
            return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return ""


def _one_line(exc: BaseException) -> str:
    """The most specific asgi-p2p message in the exception's chain, on one line."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, P2PError):
            return " ".join((str(cur) or type(cur).__name__).split())
        cur = cur.__cause__ or cur.__context__
    return " ".join((str(exc) or type(exc).__name__).split())


def _http_protocol() -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol on httptools (llhttp), keeping a request target that is not a path.

    uvicorn takes only the path of an absolute-form target (``GET http://other/ HTTP/1.1``) and
    drops its authority; the gateway sees the target as it came, and answers 400 (see
    :meth:`Gateway.route`), as with uvicorn's h11 protocol.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class Protocol(HttpToolsProtocol):
        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            if not self.url.startswith(b"/"):
                self.scope["raw_path"] = self.url.partition(b"?")[0]

    return Protocol


class GatewayServer:
    """Serves a :class:`Gateway` with uvicorn on ``host:port`` (HTTP/1.1 parsed by httptools, keep-alive,
    WebSockets, optional TLS).

    ::

        async with GatewayServer(gateway, "127.0.0.1", 8080) as server:
            print(server.url)
    """

    def __init__(
        self,
        gateway: Gateway,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        log_level: str = "warning",
        limit_concurrency: int | None = None,
        capture_signals: bool = False,
    ) -> None:
        import uvicorn

        self.gateway = gateway
        self.host = host
        self.tls = ssl_certfile is not None
        if self.tls:
            gateway.scheme = "https"
        self.config = uvicorn.Config(
            gateway,
            host=host,
            port=port,
            http=_http_protocol(),
            ws="websockets-sansio",
            lifespan="on",
            log_level=log_level,
            access_log=False,
            server_header=False,
            date_header=False,
            proxy_headers=False,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            limit_concurrency=limit_concurrency,
            ws_max_size=4 * 1024 * 1024,
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(self.config)
        if not capture_signals:
            self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound TCP port (useful with port 0)."""
        for server in self.server.servers:
            for sock in server.sockets:
                port: int = sock.getsockname()[1]
                return port
        raise RuntimeError("the gateway server is not listening")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    async def start(self) -> None:
        """Bind (raising :class:`OSError` if the address is taken) and serve in the background."""
        import socket

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP (else each
        # response waits ~40 ms for a delayed ACK)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host.strip("[]"), self.config.port))
            sock.listen(self.config.backlog)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._task = asyncio.ensure_future(self.server.serve(sockets=[sock]))
        while not self.server.started:  # uvicorn offers no event for it
            if self._task.done():
                sock.close()
                self._task.result()
                raise OSError(f"the gateway could not start on {self.host}:{self.config.port}")
            await asyncio.sleep(0.005)

    async def wait(self) -> None:
        """Until the server stops (a signal, with ``capture_signals``)."""
        if self._task is not None:
            await self._task

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def __aenter__(self) -> GatewayServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

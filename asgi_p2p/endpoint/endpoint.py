"""The endpoint: QUIC connections to authenticated peers over the paths layer's one socket."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import hmac
import ipaddress
import logging
import os
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol, Self

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicHeader,
    QuicPacketType,
    QuicProtocolVersion,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from cryptography import x509

from .. import aioquic_compat as hooks
from ..config import NetworkConfig
from ..errors import (
    AuthenticationFailed,
    ConnectionClosed,
    ConnectionFailed,
    InvalidConfiguration,
    NodeNotFound,
    P2PError,
)
from ..identity import NodeAddr, NodeId, SecretKey
from ..net.base import Address, DatagramNetwork
from ..net.udp import UdpNetwork
from ..paths.link import ManagedRelayLink, RelayRoutes
from ..paths.peer import PeerPaths
from ..paths.route import Route, RouteOwner
from ..paths.router import Router, virtual_address
from .admission import AdmissionStats, AdmissionTable, InvalidToken, RetryTokens, Verdict, source_of
from .base import ConnectionHandler
from .connection import REFUSED, ConnectionCallbacks, HandlerFactory, PeerConnection, TransmitPass
from .peerstate import (
    MAX_CIDS_PER_PEER,
    MAX_REMEMBERED,
    RememberedConnection,
    dump_peer_state,
    read_peer_state,
    reset_order,
    write_private,
)
from .reset import MIN_RESET_SIZE, MIN_TRIGGER_SIZE, RESET_TOKEN_SIZE, ResetLimiter, ResetTokens, build_stateless_reset
from .resume import (
    TICKET_LIFETIME,
    InvalidTicket,
    StrikeRegister,
    TicketCache,
    TicketSealer,
    TicketState,
    dump_client_tickets,
    load_client_tickets,
    ticket_age_fresh,
)
from .tls import node_certificate, warm_up_handshakes

__all__ = ["AllowPolicy", "Endpoint", "NodeResolver"]

log = logging.getLogger("asgi_p2p.endpoint")

#: Who may connect: None (anyone), a collection of node ids, or a callback.
AllowPolicy = Iterable[NodeId] | Callable[[NodeId], bool] | None


class NodeResolver(Protocol):
    """What an endpoint asks for the addresses of a node it was given only by id.

    Any :class:`asgi_p2p.discovery.Discovery` source fits, typically a
    :class:`~asgi_p2p.discovery.ChainedDiscovery` (ticket, DNS, relay directory, mDNS).
    """

    async def resolve(self, node_id: NodeId) -> NodeAddr: ...


#: node ids this task is looking up through :attr:`Endpoint.discovery` (a source that dials the
#: very node it is asked about, e.g. a directory known by id alone, must not recurse)
_DISCOVERING: contextvars.ContextVar[frozenset[NodeId]] = contextvars.ContextVar(
    "asgi_p2p_discovering", default=frozenset()
)

_SMALLEST_INITIAL = 1200
#: seconds a dial with direct addresses waits for the endpoint's relay to connect
_RELAY_WAIT = 3.0
_CID_LENGTH = 8
#: seconds a happy-eyeballs dial gives the on-link direct attempt before dialing through the
#: relay too (RFC 8305's Connection Attempt Delay, shortened: an on-link peer answers in
#: milliseconds, and a fresh process's relay connection takes longer than this anyway)
_DIRECT_HEAD_START = 0.05
#: seconds between two warnings about refused or retried Initials (a flood logs a count, not a line each)
_ADMISSION_LOG_INTERVAL = 10.0
#: QUIC configurations an endpoint keeps (one per role, ALPN list and server name): past
#: this many, the cache starts over
_QUIC_CONFIG_CACHE = 256
#: the QUIC versions a node offers and accepts: v1 only (aioquic derives every supported
#: version's Initial keys for each connection, about 0.1 ms of CPU per version on the way of
#: every handshake's first flight, and nodes never negotiate v2: v1 is everyone's first choice)
_QUIC_VERSIONS = (QuicProtocolVersion.VERSION_1,)
#: nodes whose next resumed connection an endpoint keeps prepared (see _prepare_dial); past
#: this many, the one prepared longest ago is dropped
_PREPARED_DIALS = 16
#: seconds after a session ticket arrives that the next connection using it is prepared
#: (after the exchange that brought the ticket, whose answers that work must not delay)
_PREPARE_DELAY = 0.25
#: the peer state file (see peerstate.py) is written this long after a change of the
#: connections (changes in a burst make one write), and at most once per interval
_PEER_STATE_DELAY = 0.1
_PEER_STATE_INTERVAL = 1.0
#: proactive stateless resets at startup: this many per batch, a batch every pacing interval
#: (1,024 connections of 4 ids each: 0.64 s at 180 KB/s of 28-byte datagrams)
_PROACTIVE_BATCH = 64
_PROACTIVE_PACING = 0.01


def _on_link(addr: Address, own: Iterable[Address]) -> bool:
    """True if ``addr`` is a private address in the subnet of one of ours (/24, IPv6 /64).

    If it answers, the peer is on our network: no NAT lies between, so dialing it before the
    peer opened its side cannot leave conntrack state on the peer's router.  (A private address
    alone says nothing: a NAT's public side may use one, as in test rigs and carrier-grade NAT.)
    """
    try:
        ip = ipaddress.ip_address(addr[0])
    except ValueError:
        return False
    if not (ip.is_private or ip.is_link_local) or ip.is_loopback or ip.is_unspecified:
        return False
    prefix = 24 if ip.version == 4 else 64
    net = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
    for mine in own:
        try:
            if ipaddress.ip_address(mine[0]) in net:
                return True
        except ValueError:
            continue
    return False


class Endpoint:
    """A node's QUIC core: connections to peers named by node id, on one datagram socket.

    Create with :meth:`bind`.  Protocols are chosen by ALPN and registered with
    :meth:`add_protocol` (the raw message API, HTTP/3, the relay, the directory).
    The socket, the relay link and every peer's paths belong to the paths layer,
    :attr:`router`; a relay client is wired in with :meth:`use_relay`.  To get a
    node with the message API and a relay in one call, use
    :meth:`asgi_p2p.node.Node.bind`.
    """

    def __init__(
        self,
        secret_key: SecretKey,
        config: NetworkConfig,
        allow: AllowPolicy,
        rng: random.Random | None = None,
    ) -> None:
        self.secret_key = secret_key
        self.config = config
        # built on first need (_node_certificate): a dial's ClientHello carries none, so a
        # process's first dial sends its Initial before paying for it
        self._certificate: x509.Certificate | None = None
        # bound on real UDP (not a simulated network): see :meth:`warm_up`
        self._real_udp = False
        self._allow: Callable[[NodeId], bool] | None
        if allow is None:
            self._allow = None
        elif callable(allow):
            self._allow = allow
        else:
            allowed = frozenset(allow)
            self._allow = allowed.__contains__
        self._factories: dict[str, HandlerFactory] = {}
        self._relay_alpns: set[str] = set()
        self._open_alpns: set[str] = set()
        self._alpn_filter: frozenset[str] | None = None
        self._cids: dict[bytes, PeerConnection] = {}
        self._connections: dict[PeerConnection, None] = {}  # ordered: deterministic close order
        self._pool: dict[tuple[NodeId, str], PeerConnection] = {}
        # happy-eyeballs dials under way (see _race): callers for the same key wait for them
        self._racing: dict[tuple[NodeId, str], asyncio.Future[PeerConnection]] = {}
        #: dials that went out as first contacts, each waiting for the relay or giving up on it
        self._relay_watches: set[asyncio.Task[None]] = set()
        self._closing = False
        self._closed = False
        self.dropped_datagrams = 0
        #: stateless resets sent (answers to packets for connections we do not know) and
        #: resets not sent because a rate limit held them back
        self.stateless_resets_sent = 0
        self.stateless_resets_limited = 0
        #: genuine stateless resets received (each ended one of our connections)
        self.stateless_resets_received = 0
        #: stateless resets sent at startup to the peers of the previous life (see :meth:`bind`'s
        #: ``peer_state``), and the peer state file's writes
        self.proactive_resets_sent = 0
        self.peer_state_writes = 0
        self._peer_state: Path | None = None
        self._peer_state_timer: asyncio.TimerHandle | None = None
        self._peer_state_refresh: asyncio.TimerHandle | None = None
        self._peer_state_saved: list[RememberedConnection] | None = None
        self._peer_state_written_at = -_PEER_STATE_INTERVAL
        self._peer_state_failed = False
        self._proactive: list[tuple[Address, bytes]] = []
        self._proactive_timer: asyncio.TimerHandle | None = None  # the next batch of them
        # connection ids a client chose for its first packets (accepted connections): they
        # route the client's Initials, but the client never sends 1-RTT packets to them
        self._client_cids: set[bytes] = set()
        self._rng: random.Random = rng if rng is not None else random.SystemRandom()
        self._reset_tokens = ResetTokens(secret_key)
        self._reset_limiter = ResetLimiter()
        # the peers' reset tokens of our connections, keyed by a keyed hash of the token so
        # that looking up a received datagram's last 16 bytes leaks nothing about the tokens
        # through timing (RFC 9000 10.3.1)
        self._peer_resets: dict[bytes, PeerConnection] = {}
        # accepted connections by source, handshaking or established, and Retry tokens
        self._admission = AdmissionTable(config)
        self._retry_tokens = RetryTokens.for_node(secret_key, config.retry_token_lifetime)
        self._admission_logged_at: float | None = None
        self._admission_unlogged = 0
        #: The paths layer: the socket, the relay link, every peer's paths.
        self.router = Router(
            secret_key, config, self._rng, deliver=self._datagram_received, deliver_relayed=self._relayed_received
        )
        self._callbacks = ConnectionCallbacks(
            cid_issued=self._register_cid,
            cid_retired=self._unregister_cid,
            ready=self._connection_ready,
            confirmed=self._connection_confirmed,
            closing=self._leave_pool,
            closed=self._forget,
            reset_token=self._peer_reset_token_changed,
            # the connections' deferred transmits run together, one callback per loop pass
            transmits=TransmitPass(),
        )
        self._relay: ManagedRelayLink | None = None
        #: Asked for the addresses of a node dialed by id alone (see :meth:`connect_quic`); None: nobody.
        self.discovery: NodeResolver | None = None
        self._quic_configs: dict[tuple[bool, tuple[str, ...], str | None], QuicConfiguration] = {}
        # session resumption (see resume.py): stateless tickets sealed with a key of the node
        # key, the early-data ClientHellos accepted lately, and our tickets for other nodes
        # (built on first need, _sealer: a node that only dials never seals or opens one)
        self._ticket_sealer: TicketSealer | None = None
        self._strikes = StrikeRegister()
        self._tickets: TicketCache[tuple[NodeId, str], hooks.ClockedSessionTicket] = TicketCache()
        # the next connection to a node, prepared ahead with the ticket it will offer (see
        # _prepare_dial), and the preparations due
        self._prepared: dict[tuple[NodeId, str], tuple[hooks.ClockedSessionTicket, QuicConnection, list[Address]]] = {}
        self._preparing: dict[tuple[NodeId, str], asyncio.TimerHandle] = {}
        #: dials that used a connection prepared ahead
        self.prepared_dials_used = 0
        #: connections accepted by resuming a session, and their 0-RTT data accepted / refused
        self.resumptions_accepted = 0
        self.early_data_accepted = 0
        self.early_data_refused = 0

    @classmethod
    async def bind(
        cls,
        secret_key: SecretKey | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        alpns: Iterable[str] | None = None,
        allow: AllowPolicy = None,
        config: NetworkConfig | None = None,
        network: DatagramNetwork | None = None,
        rng: random.Random | None = None,
        discovery: NodeResolver | None = None,
        peer_state: str | os.PathLike[str] | None = None,
    ) -> Self:
        """Bind a socket and start serving.

        ``alpns`` limits which registered protocols peers may use (default: all
        that get registered).  ``allow`` decides which peers may connect, inside
        the handshake.  ``network`` is the datagram network (real UDP by default;
        a simulated host in tests).  ``rng`` draws path-probe ids (default: the
        system's random source; tests pass a seeded ``random.Random``).
        ``discovery`` (also settable later as :attr:`discovery`) is asked where a
        node dialed by id alone is.

        ``peer_state`` names a file where the node keeps, while it runs, the peer
        address and connection ids of each live connection on a direct path (written
        shortly after they change, mode 0600).  Bound again with the same key, port
        and file after a crash, the node sends each of those peers a stateless reset at
        once: they close the connections of its previous life before their next
        request needs them, instead of learning of the restart when they send (see
        :mod:`asgi_p2p.endpoint.peerstate`).  A missing, damaged or foreign file is
        ignored (with a warning).
        """
        key = secret_key if secret_key is not None else SecretKey.generate()
        ep = cls(key, config if config is not None else NetworkConfig.from_env(), allow, rng)
        ep.discovery = discovery
        ep._alpn_filter = frozenset(alpns) if alpns is not None else None
        if network is None:
            offload = ep.config.udp_offload
            network = UdpNetwork(gso=offload == "gso+gro", gro=offload != "off", batch=offload != "off")
        await ep.router.bind(network, host, port)
        # a transmit pass's datagrams leave together (sendmmsg) where the socket can
        ep._callbacks.transmits.use_socket(ep.router.socket)
        ep._real_udp = isinstance(network, UdpNetwork)
        log.info("endpoint %s bound to %s:%d", key.node_id, *ep.router.socket.local_address)
        if peer_state is not None:
            ep._start_peer_state(Path(peer_state))
        return ep

    def warm_up(self) -> bool:
        """Pay the process's one-time handshake costs now, not on a first peer's clock.

        For a node about to serve (:class:`~asgi_p2p.http.H3Server` calls it when it
        starts): a restarted server's waiting clients would otherwise wait for them in its
        first handshakes (the QUIC configuration of accepted connections, built here, and
        :func:`~asgi_p2p.endpoint.tls.warm_up_handshakes`: two in-memory handshakes and a
        full garbage collection, 20-40 ms of CPU once per process).  Not at :meth:`bind`:
        a process that only dials would pay all of it in series before its own first
        request (a returning client's first response was
        about 30 ms later on the WAN rig), far more than the one-time costs its own first
        handshake pays without it (about 1 ms).  Real UDP only (the simulator's
        entropy is seeded: a warm-up once per process would shift the draws of whichever
        node ran first).  True if this call ran it.
        """
        if not self._real_udp:
            return False
        # the configuration accepted connections use (built once, not on the first peer's clock)
        self._quic_config(is_client=False, alpns=self._server_alpns(), server_name=None)
        self._sealer()
        return warm_up_handshakes(self._node_certificate(), self.secret_key)

    @property
    def rng(self) -> random.Random:
        """The random source the endpoint draws behavioural randomness from (seeded in tests)."""
        return self._rng

    # -- the relay ------------------------------------------------------------

    def use_relay(self, link: ManagedRelayLink) -> None:
        """Reach peers through ``link`` (a relay client built on this endpoint) and start it.

        The endpoint owns it from now on: it closes it on :meth:`close`.  The link
        reports to :attr:`router` (its :class:`~asgi_p2p.paths.link.RelaySink`).
        """
        if self._relay is not None:
            raise InvalidConfiguration(f"endpoint {self.node_id} already uses relay {self._relay.relay_url}")
        self._relay = link
        self.router.use_relay(link)
        link.start()

    @property
    def relay(self) -> ManagedRelayLink | None:
        """The relay client (see :meth:`use_relay`), None without a relay."""
        return self._relay

    # -- identity and addresses -----------------------------------------

    @property
    def node_id(self) -> NodeId:
        return self.secret_key.node_id

    @property
    def local_node_id(self) -> NodeId:
        return self.secret_key.node_id

    @property
    def local_address(self) -> Address:
        return self.router.socket.local_address

    def node_addr(self) -> NodeAddr:
        """How peers reach this node: its id, socket addresses, the address the relay
        sees it at (its NAT's public mapping) and its relay URL."""
        return self.router.node_addr()

    def own_candidates(self) -> list[Address]:
        """Addresses where peers may reach this node directly: the public one first."""
        return self.router.own_candidates()

    def on_node_addr_change(self, callback: Callable[[NodeAddr], None]) -> Callable[[], None]:
        """Call ``callback(self.node_addr())`` whenever our addresses or relay state change.

        (The relay connected or disconnected, or sees us at a new public address.)
        Use it to keep a ticket current.  Returns a function that removes the callback.
        """
        return self.router.on_node_addr_change(callback)

    def peer_paths(self, node_id: NodeId) -> PeerPaths | None:
        """The paths layer's state for a peer (None without a connection to it)."""
        return self.router.peer_paths(node_id)

    @property
    def dropped_disco(self) -> int:
        """Disco packets dropped because no connection with their sender exists (or malformed)."""
        return self.router.dropped_disco

    @property
    def unroutable_datagrams(self) -> int:
        """QUIC datagrams with nowhere to go (no live direct path and no relay)."""
        return self.router.unroutable_datagrams

    @property
    def relay_errors(self) -> int:
        """Refusals the relay reported (rate limits, unknown destinations, ...)."""
        return self.router.relay_errors

    @property
    def closing(self) -> bool:
        """True once :meth:`close` started (the endpoint takes no new connections)."""
        return self._closing

    @property
    def connections(self) -> list[PeerConnection]:
        return [c for c in self._connections if c.is_connected]

    @property
    def all_connections(self) -> list[PeerConnection]:
        """Every connection object the endpoint holds: dialed, accepted, handshaking or closing
        (:attr:`connections`: only the ones ready to use)."""
        return list(self._connections)

    @property
    def connection_count(self) -> int:
        """Every connection object the endpoint holds: dialed, accepted, handshaking or closing."""
        return len(self._connections)

    @property
    def handshaking(self) -> int:
        """Accepted connections still in their handshake (both pools, see ``max_handshaking``)."""
        return self._admission.half_open

    @property
    def admission_stats(self) -> AdmissionStats:
        """Counters of what the endpoint did with Initial packets (live object)."""
        return self._admission.stats

    # -- protocols --------------------------------------------------------

    def add_protocol(self, alpn: str, factory: HandlerFactory, *, relay: bool = False, open: bool = False) -> None:
        """Serve (and allow dialing) ``alpn``; ``factory`` makes a handler per connection.

        ``relay=True`` marks the protocol's connections as relay connections: they carry
        other connections' packets, so theirs never go through a relay themselves.
        ``open=True`` lets nodes the allow policy refuses connect with this ALPN (and
        only this one: a connection's ALPN is fixed at its handshake); pairing uses it.
        """
        if open:
            self._open_alpns.add(alpn)
        else:
            self._open_alpns.discard(alpn)
        if self._alpn_filter is not None and alpn not in self._alpn_filter and not alpn.startswith("asgi-p2p/msg"):
            self._alpn_filter = self._alpn_filter | {alpn}
        self._factories[alpn] = factory
        if relay:
            self._relay_alpns.add(alpn)
        else:
            self._relay_alpns.discard(alpn)

    def _connection_ready(self, conn: PeerConnection) -> ConnectionHandler:
        """``conn`` completed its handshake: make its handler; an accepted one joins its peer's paths.

        A dialed connection gets its handler as soon as its Finished is queued (what the
        handler writes leaves with it) and joins the peer's paths once the handshake is
        confirmed (:meth:`_connection_confirmed`).  A connection accepted on a direct path
        makes its handler first (it may refuse the connection, which the dialer then learns
        as the connection's close reason), then sends HANDSHAKE_DONE at once, then joins
        the peer's paths; one accepted early (0-RTT data, before the handshake completed)
        sends its first flight before the handler is made (a refusal follows it) and joins
        the peer's paths once the handshake completes.  One accepted through the relay joins
        the peer's paths first, as a dialer does: there that work starts the hole punching,
        whose timing both sides coordinate.
        """
        if self._peer_state is not None:
            self._peer_state_changed()
            conn.on_path_change.append(lambda _event: self._peer_state_changed())
        if self._admission.is_half_open(conn):
            self._admission.established(conn)
            # the table may have filled while this one was handshaking
            if self._established_count() > self.config.max_connections:
                self._admission.stats.refused_by_reason["max_connections"] += 1
                raise ConnectionClosed(f"too many connections (max_connections={self.config.max_connections})")
            node = conn.remote_node_id
            limit = self.config.max_connections_per_node
            if (
                node is not None
                and sum(1 for c in self._connections if c.remote_node_id == node and c.is_connected) >= limit
            ):
                self._admission.stats.refused_by_reason["max_connections_per_node"] += 1
                log.warning(
                    "refused a connection from node %s: it has %d already (max_connections_per_node)", node, limit
                )
                raise ConnectionClosed(f"too many connections from node {node} (max_connections_per_node={limit})")
        factory = self._factories.get(conn.alpn or "")
        if factory is None:
            raise ConnectionClosed(f"no protocol registered for ALPN {conn.alpn!r}")
        attach = conn.remote_node_id is not None and not self._closing
        if conn.is_client:
            handler = factory(conn)
            if attach and conn.alpn in self._relay_alpns:
                # a relay connection joins the relay's paths now, so that the size probe that
                # makes it usable follows the Finished (which leaves first) instead of waiting
                # for HANDSHAKE_DONE; other dialed connections join once the server confirmed
                # them (their CALL_ME_MAYBE would reach a peer that does not know us yet)
                conn.transmit()
                if not conn.closed:
                    assert conn.remote_node_id is not None
                    conn.route.attach(conn.remote_node_id, is_relay=True)
            return handler
        if conn.relay_peer is not None:
            if attach:
                assert conn.remote_node_id is not None
                conn.route.attach(conn.remote_node_id, is_relay=conn.alpn in self._relay_alpns)
            return factory(conn)
        if not conn.handshake_completed:
            # accepted early (0-RTT): our first flight (ServerHello to Finished) leaves before
            # the handler is made, so that the client's handshake work overlaps the handler's
            # and the early request's (what the handler writes leaves with the connection's
            # next transmit; a refusal follows the flight as the close reason).  The paths wait
            # for the handshake (_connection_confirmed), which proves the address both ways
            # (no disco PING then) and is not on the early request's way
            conn.transmit()
            return factory(conn)
        handler = factory(conn)
        conn.transmit()  # HANDSHAKE_DONE, the ACK of the client's Finished, what the handler wrote
        if attach and not conn.closed:
            assert conn.remote_node_id is not None
            conn.route.attach(conn.remote_node_id, is_relay=conn.alpn in self._relay_alpns)
        return handler

    def close_peer(self, node_id: NodeId, reason: str = "access revoked") -> int:
        """Close every connection with ``node_id`` (e.g. once it is no longer allowed); returns how many."""
        conns = [c for c in self._connections if c.remote_node_id == node_id and not c.closed]
        for conn in conns:
            log.info("closing connection with %s (%s): %s", node_id, conn.alpn, reason)
            conn.close(REFUSED, reason)
        return len(conns)

    def _connection_confirmed(self, conn: PeerConnection) -> None:
        """A dialed connection's handshake is confirmed, or an accepted one that was ready early
        (0-RTT) completed its handshake: its peer's paths start probing."""
        if self._peer_state is not None:
            self._peer_state_changed()
        if conn.remote_node_id is None or self._closing:
            return
        if not conn.is_client:
            if conn.route.peer is None:
                conn.route.attach(conn.remote_node_id, is_relay=conn.alpn in self._relay_alpns)
        elif conn.alpn not in self._relay_alpns:
            conn.route.attach(conn.remote_node_id, is_relay=conn.alpn in self._relay_alpns)

    def _server_alpns(self) -> list[str]:
        return [a for a in self._factories if self._alpn_filter is None or a in self._alpn_filter]

    def is_allowed(self, node_id: NodeId) -> bool:
        return self._allow is None or bool(self._allow(node_id))

    # -- QUIC configuration -----------------------------------------------

    def _quic_config(self, *, is_client: bool, alpns: list[str], server_name: str | None) -> QuicConfiguration:
        """The QUIC configuration of a connection, built once per role, ALPN list and server name.

        aioquic only reads a configuration, so connections share it (building one per
        connection was measurable per handshake).
        """
        key = (is_client, tuple(alpns), server_name)
        quic_config = self._quic_configs.get(key)
        if quic_config is None:
            if len(self._quic_configs) >= _QUIC_CONFIG_CACHE:
                self._quic_configs.clear()
            quic_config = self._quic_configs[key] = self._new_quic_config(is_client, alpns, server_name)
        return quic_config

    def _node_certificate(self) -> x509.Certificate:
        """This node's certificate, built on first need (the configurations built before it get it too).

        A server needs it for its first flight; a client only for its second one (its
        Certificate answers the server's CertificateRequest), so a process's first dial
        builds it right after its Initial left (:meth:`_dial`), in the round trip it then
        waits for anyway, instead of before (about 0.9 ms of a fresh process's CPU on the
        WAN rig: the first Ed25519 signature and X.509 encoding of the process).
        """
        cert = self._certificate
        if cert is None:
            cert = self._certificate = node_certificate(self.secret_key)
            for quic_config in self._quic_configs.values():
                quic_config.certificate = cert
        return cert

    def _sealer(self) -> TicketSealer:
        """The sealer of this node's session tickets, made on first need (a server's)."""
        sealer = self._ticket_sealer
        if sealer is None:
            sealer = self._ticket_sealer = TicketSealer(self.secret_key)
        return sealer

    def _new_quic_config(self, is_client: bool, alpns: list[str], server_name: str | None) -> QuicConfiguration:
        cfg = self.config
        return QuicConfiguration(
            is_client=is_client,
            alpn_protocols=list(alpns),
            # a client's: the certificate if built already, else set once its Initial left (_dial)
            certificate=self._certificate if is_client else self._node_certificate(),
            private_key=self.secret_key.private_key,
            verify_mode=0,  # ssl.CERT_NONE: our hooks check the key; TLS still checks CertificateVerify
            server_name=server_name,
            idle_timeout=cfg.idle_timeout,
            max_datagram_size=cfg.max_datagram_size,
            max_stream_data=cfg.stream_receive_window,
            max_data=cfg.connection_receive_window,
            congestion_control_algorithm=hooks.congestion_control_algorithm(
                cfg.congestion_control, cfg.initial_congestion_window
            ),
            max_datagram_frame_size=65536,
            connection_id_length=_CID_LENGTH,
            supported_versions=list(_QUIC_VERSIONS),
        )

    # -- dialing ------------------------------------------------------------

    async def connect_quic(
        self,
        addr: NodeAddr | NodeId,
        alpn: str,
        *,
        confirmed: bool = True,
        early_data: bool = False,
        padded: tuple[int, float] | None = None,
    ) -> PeerConnection:
        """A QUIC connection to the node speaking ``alpn``, reusing a live one.

        Returns once the handshake is confirmed (we hold HANDSHAKE_DONE: the peer accepted
        us), or with ``confirmed=False`` as soon as our TLS Finished is sent, half a round
        trip earlier: what the caller sends then leaves with the Finished, and a refusal by
        the peer (its allow-list, its limits) ends the connection with that reason as its
        ``close_error`` (``wait_ready()`` raises it).

        Raises :class:`AuthenticationFailed` if whoever answers is not that node
        (or refuses us), :class:`ConnectionFailed` if nobody answers.

        A session ticket this endpoint got from that node (for ``alpn``) resumes the
        session.  With ``early_data=True`` and such a ticket, the connection is returned
        as soon as the ClientHello left, :attr:`~PeerConnection.early` (what the caller
        sends now is 0-RTT data, which a network attacker can replay: safe requests only;
        await :meth:`~PeerConnection.wait_handshake` before anything else).  A dial that
        races an on-link address against the relay (happy eyeballs, :meth:`_race`) sends no
        early data: the attempts resume with the ticket, and the winner is returned once its
        handshake completed (two attempts cannot both carry the request, and an on-link
        peer answers within a LAN round trip).

        ``padded=(size, answer_within)``: a new connection pads its handshake datagrams to
        ``size`` bytes, so that its handshake proves the path carries them (no size probe
        needed after it), and falls back to the base size if no answer comes within
        ``answer_within`` seconds (see :meth:`PeerConnection.pad_handshake`).
        """
        if self._closing:
            raise ConnectionClosed("endpoint is closed")
        node_addr = addr if isinstance(addr, NodeAddr) else NodeAddr(addr)
        node_id = node_addr.node_id
        key = (node_id, alpn)
        existing = self._pool.get(key)
        if existing is not None and not existing.closing:
            await self._wait_stage(existing, confirmed=confirmed, early_data=early_data)
            return existing
        racing = self._racing.get(key)
        if racing is not None:
            conn = await asyncio.shield(racing)
            await self._wait_stage(conn, confirmed=confirmed, early_data=early_data)
            return conn
        if node_id == self.node_id:
            raise InvalidConfiguration("cannot connect to ourselves")
        discovered: str | None = None
        if (
            not node_addr.direct_addresses
            and node_addr.relay_url is None
            and self.discovery is not None
            and node_id not in _DISCOVERING.get()  # a source dialing the node it is asked about
        ):
            token = _DISCOVERING.set(_DISCOVERING.get() | {node_id})
            try:
                found = await self.discovery.resolve(node_id)
            except P2PError as exc:
                discovered = str(exc)
                log.info("discovery found no address for %s: %s", node_id, exc)
            finally:
                _DISCOVERING.reset(token)
            if discovered is None:
                if found.node_id == node_id:
                    node_addr = found
                else:
                    discovered = f"discovery answered for node {found.node_id} instead"
        is_relay = alpn in self._relay_alpns
        relay = self._relay
        if isinstance(relay, RelayRoutes) and not is_relay:
            # several relays: the one the node's home relay is (connected to on demand)
            relay = relay.link_for(node_id, node_addr.relay_url)
            relay_usable = True
        else:
            relay_usable = relay is not None and node_addr.relay_url in (None, relay.relay_url)
        if not node_addr.direct_addresses and not relay_usable:
            if node_addr.relay_url is not None:
                raise NodeNotFound(
                    f"node {node_id} is only reachable through relay {node_addr.relay_url}, and this endpoint "
                    f"{'uses relay ' + relay.relay_url if relay is not None else 'has no relay'}; "
                    "bind with that relay_url or pass direct addresses"
                )
            if discovered is not None:
                raise NodeNotFound(f"no address known for node {node_id}: {discovered}")
            raise NodeNotFound(f"no address known for node {node_id}; pass a NodeAddr or ticket with addresses")
        # an address of our own (two homes on the same private subnet) would reach us, not them
        own = self.router.own_socket_addresses()
        theirs = [a for a in node_addr.direct_addresses if a not in own]
        on_link = [a for a in theirs if _on_link(a, own)]
        if relay_usable and relay is not None and on_link and not is_relay:
            # happy eyeballs: the peer may be on our network; race that against the relay (no
            # 0-RTT data then: each attempt would carry it, see the docstring)
            race = asyncio.ensure_future(self._race(node_id, alpn, key, on_link[0], theirs, relay, confirmed))
            self._racing[key] = race

            def done(_: object) -> None:
                if self._racing.get(key) is race:
                    del self._racing[key]

            race.add_done_callback(done)
            conn = await asyncio.shield(race)
            await conn.wait_ready(self.config.connect_timeout, confirmed=confirmed)
            return conn
        # the relay takes packets from our Finished on its relay connection (can_send), half a
        # round trip before the relay confirms it (connected): the dial's first flight leaves
        # right behind that Finished; before it, a relay link that takes a first contact sends
        # the dial's Initial at once (asgi_p2p.relay.first_contact), and again at can_send
        first_contact = (
            relay_usable and relay is not None and not is_relay and not relay.can_send and relay.takes_first_contact
        )
        if not node_addr.direct_addresses and relay is not None and not relay.can_send and not first_contact:
            await relay.wait_can_send(self.config.connect_timeout)
        elif relay_usable and relay is not None and not relay.can_send and not is_relay and not first_contact:
            # dial through the relay (see asgi_p2p.paths.select) once it is up; if it does
            # not come up in time, dial the direct addresses alone
            try:
                await relay.wait_can_send(min(self.config.connect_timeout / 2, _RELAY_WAIT))
            except P2PError as exc:
                log.info("dialing %s without the relay (%s)", node_id, exc)
                self.router.dial_without_relay(node_id)
        conn = self._dial(
            node_id,
            alpn,
            direct=theirs[0] if theirs else None,
            candidates=theirs,
            is_relay=is_relay,
            padded=padded,
            first_contact=first_contact,
        )
        if first_contact and relay is not None and theirs and not relay.can_send:
            # as above: if the relay does not come up in time, the direct addresses alone
            watch = asyncio.get_running_loop().create_task(self._relay_or_direct(node_id, relay, conn))
            self._relay_watches.add(watch)
            watch.add_done_callback(self._relay_watches.discard)
        self._pool[key] = conn
        if early_data and hooks.early_data_sendable(conn.quic) and not conn.closed:
            # resuming: the connection is ready now, early (0-RTT), until the handshake completes
            conn.become_ready_early(alpn, self.config.connect_timeout)
            if conn.close_error is not None:
                raise conn.close_error
            if log.isEnabledFor(logging.DEBUG):
                log.debug("resuming with %s (%s): 0-RTT via %s", node_id, alpn, conn.path)
            return conn
        try:
            await conn.wait_ready(self.config.connect_timeout, confirmed=confirmed)
        except ConnectionFailed as exc:
            # the dial went through the relay, which went down meanwhile (it refused us after
            # our Finished, which is when the dial started): say so, not just "no handshake"
            if relay is None or relay.can_send or is_relay or not (relay_usable or not node_addr.direct_addresses):
                raise
            why = relay.last_failure
            if why is None:
                raise
            raise ConnectionFailed(f"{exc} (relay {relay.relay_url} is not usable: {why})") from exc
        log.debug("connected to %s (%s) via %s", node_id, alpn, conn.path)
        return conn

    def pooled_connection(
        self, node_id: NodeId, alpn: str, *, confirmed: bool = True, early_data: bool = False
    ) -> PeerConnection | None:
        """The live pooled connection to ``node_id`` speaking ``alpn`` if it already reached the
        stage :meth:`connect_quic` with these arguments waits for (so that it would return it at
        once, without waiting), else None: a caller's per-request fast path, which needs no
        deadline because nothing waits.  A connection that sent or received CONNECTION_CLOSE
        (:attr:`~PeerConnection.closing`) has left the pool: it is never handed out."""
        conn = self._pool.get((node_id, alpn))
        if conn is None or self._closing or conn.closing:
            return None
        if conn.early:  # (ready for 0-RTT data only)
            return conn if early_data else None
        return conn if (conn.is_confirmed if confirmed else conn.is_connected) else None

    async def _relay_or_direct(self, node_id: NodeId, relay: ManagedRelayLink, conn: PeerConnection) -> None:
        """A dial sent as a first contact, with direct addresses too: if the relay does not come
        up in time, its direct addresses get its first flight at full TTL, at once (as a dial
        that waited for the relay would send it then)."""
        try:
            await relay.wait_can_send(min(self.config.connect_timeout / 2, _RELAY_WAIT))
        except P2PError as exc:
            peer = self.router.peer_paths(node_id)
            if peer is None or self._closing or conn.closed or conn.handshake_completed:
                return
            log.info("dialing %s without the relay (%s)", node_id, exc)
            conn.route.first_contact = False  # (the relay's attempt may go on: no more first contacts)
            peer.relay_unknown_destination()
            peer.update_routes()
            # the Initial's probe timeout has backed off meanwhile: send it again now
            hooks.resend_handshake_now(conn.quic, asyncio.get_running_loop().time())
            conn.transmit()

    async def _wait_stage(self, conn: PeerConnection, *, confirmed: bool, early_data: bool) -> None:
        """Wait until ``conn`` (pooled, or won a race) reached the stage the caller asked for:
        early (0-RTT) is enough with ``early_data``; else ready (``confirmed=False``: the
        handshake completed here) or confirmed."""
        if early_data and conn.early:
            return
        await conn.wait_ready(self.config.connect_timeout, confirmed=confirmed)
        if conn.early:  # ready but still in its 0-RTT phase: the caller wants 1-RTT
            await conn.wait_handshake()  # the connection's own deadline bounds this

    async def _race(
        self,
        node_id: NodeId,
        alpn: str,
        key: tuple[NodeId, str],
        lan: Address,
        theirs: list[Address],
        relay: ManagedRelayLink,
        confirmed: bool,
    ) -> PeerConnection:
        """Happy eyeballs (RFC 8305): dial ``lan`` directly now, through the relay after a head start.

        ``lan`` is a private address in one of our subnets: if it answers, the peer is on our
        network (no NAT between us, so a packet sent before the peer opened its side cannot spoil a
        hole punch, see docs/nat-traversal.md) and the relay's handshake stays off the critical
        path.  Public addresses are never raced: they are punched through the relay as before.
        The first connection whose handshake completes wins; the other one is closed.
        """
        loop = asyncio.get_running_loop()
        timeout = self.config.connect_timeout
        deadline = loop.time() + timeout
        first = self._dial(node_id, alpn, direct=lan, candidates=theirs, is_relay=False, on_link=True)
        attempts = [first]

        async def through_relay() -> PeerConnection:
            head_start = loop.time() + _DIRECT_HEAD_START
            direct: Address | None = theirs[0]
            if not relay.can_send:
                try:
                    await relay.wait_can_send(min(timeout / 2, _RELAY_WAIT))
                except P2PError as exc:
                    log.info("dialing %s without the relay (%s)", node_id, exc)
                    self.router.dial_without_relay(node_id)
                    rest = [a for a in theirs if a != lan]
                    if not rest:
                        never: asyncio.Future[PeerConnection] = loop.create_future()
                        return await never  # the direct attempt is all there is
                    direct = rest[0]
            await asyncio.sleep(max(0.0, head_start - loop.time()))
            conn = self._dial(node_id, alpn, direct=direct, candidates=theirs, is_relay=False)
            attempts.append(conn)
            await conn.wait_ready(max(0.0, deadline - loop.time()), confirmed=False)
            return conn

        async def on_lan() -> PeerConnection:
            await first.wait_ready(timeout, confirmed=False)
            return first

        tasks = [asyncio.ensure_future(on_lan()), asyncio.ensure_future(through_relay())]
        winner: PeerConnection | None = None
        errors: list[BaseException] = []
        try:
            pending = set(tasks)
            while pending and winner is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in tasks:
                    if task in done and winner is None:
                        exc = task.exception()
                        if exc is None:
                            winner = task.result()
                        elif isinstance(exc, AuthenticationFailed) and task is tasks[1]:
                            # the node answered through the relay and refused us (an answer on the
                            # on-link address may be another node: homes share private subnets)
                            raise exc
                        else:
                            errors.append(exc)
        finally:
            for task in tasks:
                task.cancel()
            for conn in attempts:
                if conn is not winner:
                    conn.close(REFUSED, "another path to the node answered first")
        if winner is None:
            raise errors[-1] if errors else ConnectionFailed(f"no handshake with node {node_id}")
        log.debug("connected to %s (%s) via %s (%s)", node_id, alpn, winner.path, "LAN" if winner is first else "relay")
        self._pool[key] = winner
        return winner

    def _dial(
        self,
        node_id: NodeId,
        alpn: str,
        *,
        direct: Address | None,
        candidates: list[Address],
        is_relay: bool,
        on_link: bool = False,
        padded: tuple[int, float] | None = None,
        first_contact: bool = False,
    ) -> PeerConnection:
        """A new dialed connection, its first flight sent: to ``direct`` and/or through the relay.

        The ClientHello leaves at once, before the caller writes any 0-RTT data (which follows
        in a datagram of its own): the peer starts its share of the handshake meanwhile.
        Measured three times (docs/benchmarks.md, branches roam, rs2, rs3): holding the
        ClientHello back so that the request rides in its datagram made the server's first
        flight, which the client then waits for, later.
        """
        address = direct if direct is not None else virtual_address(node_id)
        key = (node_id, alpn)
        # a session ticket of the node's resumes the session (the caller may send 0-RTT data)
        ticket = self._tickets.get(key, self._node_time())
        prepared = self._prepared.pop(key, None)
        if prepared is not None and prepared[0] is ticket and padded is None:
            _, quic, where = prepared
            self.prepared_dials_used += 1
        else:
            quic, where = self._client_quic(key, ticket)
        where.append(address)

        def route(owner: RouteOwner) -> Route:
            # from now on the peer's disco packets are accepted
            return self.router.dial_route(
                node_id,
                owner,
                direct=direct,
                candidates=candidates,
                is_relay=is_relay,
                on_link=on_link,
                first_contact=first_contact,
            )

        conn = PeerConnection(
            quic,
            address,
            is_client=True,
            expected_node_id=node_id,
            config=self.config,
            callbacks=self._callbacks,
            route=route,
        )

        hooks.install_reset_tokens(quic, self._reset_tokens.token, lambda cid: self._register_cid(cid, conn))
        if padded is not None:
            conn.pad_handshake(*padded)
        quic.connect(address, now=conn.now())
        self._register_cid(quic.host_cid, conn)
        self._connections[conn] = None
        conn.route.start()
        conn.transmit()
        conn.route.start_probing()
        # our certificate goes in our second flight: built now, behind the Initial (see
        # _node_certificate), before any answer can be read
        hooks.ensure_certificate(quic, self._node_certificate)
        return conn

    def _client_quic(
        self, key: tuple[NodeId, str], ticket: hooks.ClockedSessionTicket | None
    ) -> tuple[QuicConnection, list[Address]]:
        """A new client QUIC connection to node ``key[0]`` for ALPN ``key[1]``, offering
        ``ticket``, checking the server's key in the handshake; and the list where its
        dial puts the address (for the error message of a wrong key)."""
        node_id, alpn = key
        quic_config = self._quic_config(is_client=True, alpns=[alpn], server_name=str(node_id))
        if ticket is not None:
            quic_config = copy.copy(quic_config)
            quic_config.session_ticket = ticket
        quic = QuicConnection(configuration=quic_config, session_ticket_handler=lambda t: self._ticket_received(key, t))
        where: list[Address] = []

        def check_server(raw: bytes) -> None:
            if raw != node_id.to_bytes():
                at = f" at {where[0][0]}:{where[0][1]}" if where else ""
                raise hooks.AlertBadCertificate(f"server{at} is node {NodeId(raw)}, not {node_id}")

        hooks.install_identity_hooks(quic, check_server)
        return quic, where

    def _prepare_dial(self, key: tuple[NodeId, str]) -> None:
        """Prepare the next connection to node ``key[0]`` (ALPN ``key[1]``) with the session
        ticket held for it now: the QUIC connection, its TLS context, Initial keys and packet
        spaces (see :func:`~asgi_p2p.aioquic_compat.initialize_ahead`).

        A dial then only writes the ClientHello: work that sat between a restarted peer's
        stateless reset and the new ClientHello (about 0.35 ms of 1.8 on the restart
        benchmark) is done while idle.  The prepared connection is used only with that very
        ticket.
        """
        self._preparing.pop(key, None)
        if self._closing:
            return
        ticket = self._tickets.get(key, self._node_time())
        self._prepared.pop(key, None)
        if ticket is None:
            return
        quic, where = self._client_quic(key, ticket)
        hooks.set_peer_stream_limit(quic, self.config.max_streams)  # announced in what is built now
        hooks.initialize_ahead(quic)
        while len(self._prepared) >= _PREPARED_DIALS:
            del self._prepared[next(iter(self._prepared))]
        self._prepared[key] = (ticket, quic, where)

    # -- receiving (from the paths layer) ------------------------------------

    def _datagram_received(self, data: bytes, addr: Address) -> None:
        """A QUIC packet the router received on the socket from ``addr``."""
        if self._closed:
            return
        # Fast path: a short-header (1-RTT) packet names our connection id right after byte 0.
        if len(data) > _CID_LENGTH and not data[0] & 0x80:
            short = self._cids.get(data[1 : 1 + _CID_LENGTH])
            if short is not None:
                try:
                    short.datagram_received(data, addr)
                except Exception:
                    self.dropped_datagrams += 1
                    log.exception("error processing datagram from %s", addr)
                return
        self._quic_received(data, addr, None)

    def _relayed_received(self, data: bytes, src: NodeId) -> None:
        """A QUIC packet the relay forwarded from ``src``."""
        if self._closed:
            return
        self._quic_received(data, None, src)

    def _quic_received(self, data: bytes, addr: Address | None, relay_src: NodeId | None) -> None:
        """A QUIC packet from ``addr``, or (``addr`` None) from ``relay_src`` through the relay."""
        buf = hooks.Buffer(data=data)
        try:
            header = pull_quic_header(buf, host_cid_length=_CID_LENGTH)
        except ValueError:
            self.dropped_datagrams += 1
            log.debug("dropped %d-byte datagram from %s: not QUIC", len(data), addr or "the relay")
            return
        conn = self._cids.get(header.destination_cid)
        if conn is not None:
            try:
                conn.datagram_received(data, addr)
            except Exception:  # aioquic should not raise; never let one peer break the socket
                self.dropped_datagrams += 1
                log.exception("error processing datagram from %s", addr)
            return
        if header.packet_type == QuicPacketType.ONE_RTT:  # a short header naming no connection of ours
            self.dropped_datagrams += 1
            self._unknown_short_header(data, header.destination_cid, addr, relay_src)
            return
        if header.packet_type == QuicPacketType.VERSION_NEGOTIATION or header.version is None:
            self.dropped_datagrams += 1
            return
        if header.version not in _QUIC_VERSIONS:
            if addr is None:
                self.dropped_datagrams += 1
                return
            self.router.sendto(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=list(_QUIC_VERSIONS),
                ),
                addr,
            )
            return
        if header.packet_type != QuicPacketType.INITIAL or len(data) < _SMALLEST_INITIAL or self._closing:
            self.dropped_datagrams += 1
            return
        # No state for what does not decrypt: the Initial keys derive from the destination
        # connection id, so checking costs a key derivation and one AEAD open, about half
        # of creating a connection that would then find nothing to process.
        if not hooks.initial_packet_decrypts(
            data[: header.packet_length], buf.tell(), header.version, header.destination_cid
        ):
            self.dropped_datagrams += 1
            self._admission.stats.undecryptable += 1
            return
        if addr is not None:
            self._admit(data, header, addr, source_of(addr), None)
        elif relay_src is not None:
            self._admit(data, header, virtual_address(relay_src), f"relay:{relay_src}", relay_src)

    def _admit(self, data: bytes, header: QuicHeader, addr: Address, source: str, relay_src: NodeId | None) -> None:
        """An Initial that decrypted and names no connection: create one, or answer statelessly.

        Direct Initials with a Retry token come from a validated address; without one they
        take a slot of the unvalidated pool, or get a Retry when it (or their address's
        share) is full.  An Initial the relay forwards counts as validated and no Retry is
        ever sent through the relay (a refusal is).  The relay authenticated most senders
        (their relay connection), not all: a first contact (``relay_first_contact``, on by
        default) is an Initial under a NodeId the sender only claims; the relay bounds those
        per destination (``MAX_PER_DESTINATION``, 4 live, each for 2 s, see
        ``asgi_p2p.relay.first_contact``), so they hold few of the validated slots.
        """
        now = asyncio.get_running_loop().time()
        stats = self._admission.stats
        original_dcid = header.destination_cid
        retry_scid: bytes | None = None
        validated = relay_src is not None
        if relay_src is None and header.token:
            try:
                original_dcid = self._retry_tokens.validate(
                    address=addr, destination_cid=header.destination_cid, token=header.token, now=now
                )
            except InvalidToken as exc:
                stats.invalid_tokens += 1
                self.dropped_datagrams += 1
                self._close_invalid_token(header, addr, exc, now)
                return
            retry_scid = header.destination_cid
            validated = True
        verdict, reason = self._admission.decide(
            source, validated=validated, established=self._established_count(), now=now
        )
        if verdict is Verdict.RETRY:
            stats.retries += 1
            scid = self._rng.randbytes(_CID_LENGTH)
            token = self._retry_tokens.create(address=addr, original_dcid=original_dcid, retry_scid=scid, now=now)
            self.router.sendto(
                encode_quic_retry(
                    version=header.version or 1,
                    source_cid=scid,
                    destination_cid=header.source_cid,
                    original_destination_cid=header.destination_cid,
                    retry_token=token,
                ),
                addr,
            )
            self._log_admission(now, logging.INFO, "answering Initials with Retry (from %s:%d: %s)", addr, reason)
            return
        if verdict is Verdict.DROP:
            stats.dropped_busy += 1
            self.dropped_datagrams += 1
            self._log_admission(now, logging.WARNING, "dropped validated Initial from %s:%d: %s", addr, reason)
            return
        if verdict is Verdict.REFUSE:
            stats.refused += 1
            close = hooks.encode_initial_close(
                version=header.version or 1,
                client_destination_cid=header.destination_cid,
                client_source_cid=header.source_cid,
                error_code=QuicErrorCode.CONNECTION_REFUSED,
                reason=reason,
            )
            if relay_src is not None:
                self.router.relay_send(relay_src, [(close, addr)])
            else:
                self.router.sendto(close, addr)
            self._log_admission(now, logging.WARNING, "refused connection from %s:%d: %s", addr, reason)
            return
        self._accept(data, addr, original_dcid, header.destination_cid, retry_scid, source, validated, relay_src)

    def _close_invalid_token(self, header: QuicHeader, addr: Address, exc: InvalidToken, now: float) -> None:
        """Close a connection attempt whose Retry token is invalid, statelessly.

        The client will not accept another Retry (RFC 9000 8.1.3: the server SHOULD
        immediately close with INVALID_TOKEN), so instead of letting it wait out its
        handshake timeout it gets a CONNECTION_CLOSE in an Initial built from the packet's
        keys: no state, smaller than the Initial it answers, and within the stateless
        reset limits (overall and per address), so a flood of forged tokens gets little.
        """
        if not self._reset_limiter.allow(addr, now):
            stats = self._admission.stats
            stats.invalid_token_closes_limited += 1
            log.debug("dropped Initial from %s:%d: %s (close rate-limited)", *addr, exc)
            return
        self._admission.stats.invalid_token_closes += 1
        close = hooks.encode_initial_close(
            version=header.version or 1,
            client_destination_cid=header.destination_cid,
            client_source_cid=header.source_cid,
            error_code=QuicErrorCode.INVALID_TOKEN,
            reason=str(exc),
        )
        self.router.sendto(close, addr)
        log.debug("closed the connection attempt from %s:%d: %s", *addr, exc)

    def _log_admission(self, now: float, level: int, msg: str, addr: Address, reason: object) -> None:
        """Log an admission decision, at most once per ``_ADMISSION_LOG_INTERVAL`` (a flood logs counts)."""
        if level <= logging.DEBUG:
            log.debug(msg, *addr, reason)
            return
        last = self._admission_logged_at
        if last is not None and now - last < _ADMISSION_LOG_INTERVAL:
            self._admission_unlogged += 1
            return
        skipped, self._admission_unlogged = self._admission_unlogged, 0
        self._admission_logged_at = now
        suffix = f" (and {skipped} more Initials retried, refused or dropped since the last line)" if skipped else ""
        log.log(level, msg + "%s; endpoint %s, %s", *addr, reason, suffix, self.node_id, self._admission.stats)

    def _established_count(self) -> int:
        """Connections past their handshake (or dialed by us), which ``max_connections`` bounds."""
        return len(self._connections) - self._admission.half_open

    def _accept(
        self,
        data: bytes,
        addr: Address,
        original_dcid: bytes,
        dcid: bytes,
        retry_scid: bytes | None,
        source: str,
        validated: bool,
        relay_src: NodeId | None,
    ) -> None:
        quic = QuicConnection(
            configuration=self._quic_config(is_client=False, alpns=self._server_alpns(), server_name=None),
            original_destination_connection_id=original_dcid,
            retry_source_connection_id=retry_scid,
        )
        direct = None if relay_src is not None else addr

        def route(owner: RouteOwner) -> Route:
            return self.router.accept_route(owner, direct, relay_src)

        conn = PeerConnection(
            quic,
            addr,
            is_client=False,
            expected_node_id=None,
            config=self.config,
            callbacks=self._callbacks,
            route=route,
        )

        def check_client(raw: bytes) -> None:
            node_id = NodeId(raw)
            if relay_src is not None and node_id != relay_src:
                raise hooks.AlertAccessDenied(f"the relay says it forwards node {relay_src}, TLS says {node_id}")
            if not self.is_allowed(node_id) and quic.tls.alpn_negotiated not in self._open_alpns:
                log.info("refused node %s from %s:%d: not allowed", node_id, *addr)
                self._admission.stats.refused_by_reason["not_allowed"] += 1
                raise hooks.AlertAccessDenied(f"node {node_id} is not allowed to connect to {self.node_id}")

        hooks.install_identity_hooks(quic, check_client)

        def open_ticket(offer: hooks.OfferedTicket) -> hooks.ResumableSession | None:
            return self._resume(conn, offer, addr, relay_src)

        def issue_ticket(key: bytes | None, alpn: str, suite: int, secret: bytes, age_add: int) -> bytes | None:
            client = NodeId(key) if key is not None else conn.remote_node_id
            if client is None:
                return None
            state = TicketState(secret, suite, self._node_time(), TICKET_LIFETIME, age_add, alpn, client)
            return self._sealer().seal(state, self._rng)

        hooks.install_server_resumption(
            quic, open_ticket=open_ticket, issue_ticket=issue_ticket, lifetime=TICKET_LIFETIME, rng=self._rng
        )
        hooks.install_reset_tokens(quic, self._reset_tokens.token, lambda cid: self._register_cid(cid, conn))
        self._register_cid(dcid, conn)
        self._client_cids.add(dcid)
        self._register_cid(quic.host_cid, conn)
        self._connections[conn] = None
        timer = conn.loop.call_later(self.config.handshake_timeout, self._handshake_expired, conn)
        self._admission.admit(conn, source, validated=validated, timer=timer)
        conn.route.start()  # size its handshake datagrams (through the relay: what the relay carries)
        conn.datagram_received(data, addr if relay_src is None else None, then_transmit=False)
        if conn.early and conn.datagrams_sent:  # accepted early, 0-RTT, on a direct path: the first
            # flight left while the handler was made, the rest leaves with a scheduled transmit
            conn.schedule_transmit()
        else:
            conn.transmit()  # the first flight leaves now (and a close QUIC decided on becomes visible)
        if not hooks.received_any_packet(quic) or hooks.is_closing(quic):
            # nothing in the datagram was accepted, or it made QUIC close (no CRYPTO frame,
            # a malformed ClientHello, bad transport parameters): its answer went out; keep nothing
            self._admission.stats.dropped_at_once += 1
            conn.abort(ConnectionFailed(f"first datagram from {addr[0]}:{addr[1]} was not accepted"))

    # -- session resumption -------------------------------------------------------------

    def _node_time(self) -> float:
        """Unix time by the network's clock (virtual in the simulator): what tickets' ages count in."""
        return asyncio.get_running_loop().time() + self.router.clock_offset

    def _ticket_received(self, key: tuple[NodeId, str], ticket: object) -> None:
        """The node ``key[0]`` sent a session ticket (for ALPN ``key[1]``): keep it for the next dial."""
        clocked = hooks.clocked_ticket(ticket, self._node_time)  # type: ignore[arg-type]
        lifetime = min(clocked.lifetime, TICKET_LIFETIME)
        self._tickets.put(key, clocked, clocked.received_at + lifetime)
        if self._real_udp and not self._closing:
            # the next connection to the node is prepared with this ticket once the exchange
            # that brought it is over (real UDP only, as warm_up: the simulator's entropy is
            # seeded, and preparing draws from it)
            pending = self._preparing.pop(key, None)
            if pending is not None:
                pending.cancel()
            elif len(self._preparing) >= _PREPARED_DIALS:
                return
            self._preparing[key] = asyncio.get_running_loop().call_later(_PREPARE_DELAY, self._prepare_dial, key)

    def export_session_tickets(self) -> bytes:
        """The session tickets this endpoint holds, serialized, for :meth:`import_session_tickets`
        in a later process (so that its first connection to each node resumes, with 0-RTT).

        The data holds resumption secrets: whoever reads it can resume our sessions with
        those nodes, as us, until the tickets expire (24 hours); store it as privately as
        the key (mode 0600).
        """
        held = self._tickets.items(self._node_time())
        return dump_client_tickets(self.node_id, [(node, alpn, t) for (node, alpn), t in held])

    def import_session_tickets(self, data: bytes) -> int:
        """Hold the tickets of :meth:`export_session_tickets` (expired ones are skipped); returns
        how many.  Raises ValueError for data that is not such an export of this node's
        (a ticket resumes as the node that got it: another key's tickets are refused)."""
        entries = load_client_tickets(data, self.node_id, self._node_time, self._tickets.capacity)
        for node, alpn, ticket in entries:
            self._tickets.put((node, alpn), ticket, ticket.received_at + ticket.lifetime)
        return len(entries)

    def forget_session_tickets(self) -> None:
        """Forget every session ticket held (the next connection to each node is a full handshake)."""
        self._tickets = TicketCache(self._tickets.capacity)
        self._forget_prepared()

    def _forget_prepared(self) -> None:
        for pending in self._preparing.values():
            pending.cancel()
        self._preparing.clear()
        self._prepared.clear()

    def _resume(
        self, conn: PeerConnection, offer: hooks.OfferedTicket, addr: Address, relay_src: NodeId | None
    ) -> hooks.ResumableSession | None:
        """A ClientHello offers a session ticket: resume if it is ours and its node is allowed now."""
        now = self._node_time()
        try:
            state = self._sealer().open(offer.ticket, now)
        except InvalidTicket as exc:
            log.debug("full handshake with %s:%d: %s", *addr, exc)
            return None
        node_id = state.client
        if relay_src is not None and node_id != relay_src:
            raise hooks.AlertAccessDenied(f"the relay says it forwards node {relay_src}, the ticket says {node_id}")
        if state.alpn in self._open_alpns:
            # a ticket of a protocol open to any node (pairing) proves nothing the allow-list
            # needs; a full handshake checks the node for the ALPN it then negotiates
            log.debug("full handshake with %s:%d: its ticket is for open protocol %s", *addr, state.alpn)
            return None
        if not self.is_allowed(node_id):
            log.info("refused node %s from %s:%d (resuming a session): not allowed", node_id, *addr)
            raise hooks.AlertAccessDenied(f"node {node_id} is not allowed to connect to {self.node_id}")
        conn.remote_node_id = node_id
        self.resumptions_accepted += 1
        fresh = ticket_age_fresh(state, offer.obfuscated_age, now)

        def accept_early() -> bool:
            strikes = self._strikes
            if not fresh:
                why = "ticket age off by more than the freshness window: recorded earlier?"
            elif offer.alpn != state.alpn:
                why = f"ALPN {offer.alpn!r}, the ticket's is {state.alpn!r}"
            elif state.alpn in self._relay_alpns:
                # a relay forwards nothing before the client's Finished: no replayable early frames
                why = "a relay connection"
            elif strikes.check_and_add(offer.client_random, now):
                self.early_data_accepted += 1
                return True
            else:
                why = "strike register full" if len(strikes) >= strikes.capacity else "a replayed ClientHello"
            self.early_data_refused += 1
            # debug: a replay can be sent many times; the handshake itself goes on
            log.debug("refused 0-RTT data of node %s from %s:%d (%s)", node_id, *addr, why)
            return False

        return hooks.ResumableSession(state.resumption_secret, state.cipher_suite, accept_early)

    def _handshake_expired(self, conn: PeerConnection) -> None:
        """An accepted connection is still handshaking after ``handshake_timeout``: drop it."""
        if not self._admission.is_half_open(conn) or conn.closed:
            return
        self._admission.stats.handshake_timeouts += 1
        timeout = self.config.handshake_timeout
        log.debug("dropping connection from %s:%d: no handshake within %gs", *conn.address, timeout)
        conn.close(REFUSED, f"handshake timed out after {timeout:g}s")
        conn.abort(ConnectionFailed(f"no handshake within {timeout:g}s"))

    # -- stateless reset (RFC 9000 10.3) ---------------------------------------------

    def _unknown_short_header(self, data: bytes, dcid: bytes, addr: Address | None, relay_src: NodeId | None) -> None:
        """A short-header datagram for a connection id we do not know.

        Either a stateless reset from a peer that forgot one of our connections (its
        last 16 bytes are the token the peer announced), or a packet of a connection
        we forgot (a previous life of this node, or one closed long ago): we answer
        that with a stateless reset, so the peer learns at once that it is gone.
        """
        if len(data) >= MIN_RESET_SIZE:
            conn = self._peer_resets.get(self._reset_tokens.index(data[-RESET_TOKEN_SIZE:]))
            if (
                conn is not None
                and conn.reset_token is not None
                and hmac.compare_digest(conn.reset_token, data[-RESET_TOKEN_SIZE:])
                and self._reset_source_matches(conn, addr, relay_src)
            ):
                self.stateless_resets_received += 1
                conn.stateless_reset()
                return
        # Answer with a reset: only to what could be a genuine packet (a stateless reset of
        # ours, or one of minimum size, gets none: resets answering resets shrink and stop,
        # RFC 9000 10.3.3), and within the rate limits.
        if len(data) < MIN_TRIGGER_SIZE or self._closing:
            return
        if not self._reset_limiter.allow(addr if addr is not None else relay_src, asyncio.get_running_loop().time()):
            self.stateless_resets_limited += 1
            return
        reset = build_stateless_reset(self._reset_tokens.token(dcid), len(data), self._rng)
        self.stateless_resets_sent += 1
        if addr is not None:
            log.debug("stateless reset (%d bytes) to %s:%d for an unknown connection id", len(reset), *addr)
            self.router.sendto(reset, addr)
        elif relay_src is not None:
            # through the relay, back to the node the relay says sent the packet
            log.debug("stateless reset (%d bytes) to node %s through the relay", len(reset), relay_src)
            self.router.relay_send(relay_src, [(reset, virtual_address(relay_src))])

    @staticmethod
    def _reset_source_matches(conn: PeerConnection, addr: Address | None, relay_src: NodeId | None) -> bool:
        """A reset counts only from where the peer's packets come: one of its addresses, or the relay for it."""
        if addr is None:
            return relay_src is not None and relay_src == conn.remote_node_id
        return addr == conn.address or addr == conn.route.direct or addr == conn.direct_address

    def _peer_reset_token_changed(self, conn: PeerConnection, old: bytes | None, new: bytes | None) -> None:
        if old is not None:
            key = self._reset_tokens.index(old)
            if self._peer_resets.get(key) is conn:
                del self._peer_resets[key]
        if new is not None and not conn.closed:
            self._peer_resets[self._reset_tokens.index(new)] = conn

    # -- proactive stateless resets (peer state file, see peerstate.py) ------------------

    def _start_peer_state(self, path: Path) -> None:
        """Reset the connections the file remembers (if recent), then keep it current."""
        loaded = read_peer_state(path, self.node_id, self._remembered_limit)
        self._peer_state = path
        port = self.local_address[1]
        if loaded is not None:
            file_port, written_at, conns = loaded
            age = self._node_time() - written_at
            if file_port != port:
                # peers take a reset only from the address their connection uses (and another
                # process with this key may be serving on that port now)
                log.info(
                    "not resetting the %d connection(s) in %s: they were on port %d, this node is on %d",
                    len(conns),
                    path,
                    file_port,
                    port,
                )
            elif not -_PEER_STATE_INTERVAL <= age <= self.config.idle_timeout:
                log.info(
                    "not resetting the %d connection(s) in %s: written %.0fs ago, the peers have dropped them "
                    "(idle timeout %gs)",
                    len(conns),
                    path,
                    age,
                    self.config.idle_timeout,
                )
            elif conns:
                log.info(
                    "resetting %d connection(s) of this node's previous life (from %s, written %.1fs ago)",
                    len(conns),
                    path,
                    age,
                )
                self._proactive = reset_order(conns)
                self._send_proactive_resets()  # the first batch now: before the app's startup
        self._peer_state_changed()  # the file holds this life's connections from now on

    def _send_proactive_resets(self) -> None:
        """Send the next batch of the startup resets (28 bytes each, paced; see _PROACTIVE_BATCH)."""
        self._proactive_timer = None
        if self._closing:
            self._proactive = []
            return
        batch, self._proactive = self._proactive[:_PROACTIVE_BATCH], self._proactive[_PROACTIVE_BATCH:]
        for addr, cid in batch:
            if cid in self._cids:  # (a connection of this life drew the same id: 2^-64)
                continue
            # of the size that no node answers with a reset of its own (a peer that has
            # already forgotten the connection sees a datagram too small to be a packet)
            reset = build_stateless_reset(self._reset_tokens.token(cid), MIN_TRIGGER_SIZE, self._rng)
            self.proactive_resets_sent += 1
            log.debug("stateless reset (%d bytes) to %s:%d for a connection of the previous life", len(reset), *addr)
            self.router.sendto(reset, addr)
        if self._proactive:
            self._proactive_timer = asyncio.get_running_loop().call_later(
                _PROACTIVE_PACING, self._send_proactive_resets
            )

    def _peer_state_changed(self) -> None:
        """The connections changed: write the peer state file soon (at most once per interval)."""
        if self._peer_state_timer is not None or self._closing:
            return
        loop = asyncio.get_running_loop()
        delay = max(_PEER_STATE_DELAY, self._peer_state_written_at + _PEER_STATE_INTERVAL - loop.time())
        self._peer_state_timer = loop.call_later(delay, self._write_peer_state)

    def remembered_connections(self) -> list[RememberedConnection]:
        """What the peer state file holds for the connections now: each live connection on a
        direct path, its peer's address and the ids it sends to (the one it used last first);
        at most ``max_connections`` and :data:`~.peerstate.MAX_REMEMBERED` of them."""
        issued: dict[PeerConnection, list[bytes]] = {}
        for cid, conn in self._cids.items():
            if cid not in self._client_cids:
                issued.setdefault(conn, []).append(cid)
        out: list[RememberedConnection] = []
        for conn in self._connections:
            direct = conn.route.direct
            # (handshake completed: an accepted 0-RTT connection is ready before the client
            # proved its key, and its ClientHello may be a replay from a spoofed address)
            if direct is None or not conn.is_connected or not conn.handshake_completed:
                continue
            current = conn.quic.host_cid
            cids = [current, *(c for c in issued.get(conn, ()) if c != current)]
            out.append(RememberedConnection(direct, tuple(cids[:MAX_CIDS_PER_PEER])))
            if len(out) >= self._remembered_limit:
                break
        return out

    @property
    def _remembered_limit(self) -> int:
        """The most connections the peer state file holds (and a restart reads back)."""
        return min(self.config.max_connections, MAX_REMEMBERED)

    def _write_peer_state(self) -> None:
        """Write the file if the connections changed, or if it holds connections and its time is
        half an idle timeout old: a restart long after the last change (the connections kept
        alive all along) still finds a file recent enough to reset them."""
        self._peer_state_timer = None
        if self._peer_state_refresh is not None:
            self._peer_state_refresh.cancel()
            self._peer_state_refresh = None
        path = self._peer_state
        if path is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        conns = self.remembered_connections()
        refresh = max(_PEER_STATE_INTERVAL, self.config.idle_timeout / 2)
        if conns and not self._closing:
            self._peer_state_refresh = loop.call_later(refresh, self._write_peer_state)
        if conns == self._peer_state_saved and not (conns and now - self._peer_state_written_at >= refresh):
            return
        try:
            write_private(path, dump_peer_state(self.node_id, self.local_address[1], self._node_time(), conns))
        except OSError as exc:
            if not self._peer_state_failed:  # warned once until a write works again
                log.warning("could not write peer state file %s: %s", path, exc)
            self._peer_state_failed = True
        else:
            self._peer_state_failed = False
            self._peer_state_saved = conns
            self.peer_state_writes += 1
        self._peer_state_written_at = now

    # -- bookkeeping (the connections' callbacks) --------------------------------

    def _register_cid(self, cid: bytes, conn: PeerConnection) -> None:
        self._cids[cid] = conn
        if self._peer_state is not None:
            self._peer_state_changed()

    def _unregister_cid(self, cid: bytes) -> None:
        self._cids.pop(cid, None)
        self._client_cids.discard(cid)
        if self._peer_state is not None:
            self._peer_state_changed()

    def _forget(self, conn: PeerConnection) -> None:
        self._connections.pop(conn, None)
        self._admission.forget(conn)
        if conn.reset_token is not None:
            self._peer_reset_token_changed(conn, conn.reset_token, None)
        for cid in [c for c, v in self._cids.items() if v is conn]:
            del self._cids[cid]
            self._client_cids.discard(cid)
        if self._peer_state is not None:
            self._peer_state_changed()
        self._leave_pool(conn)

    def _leave_pool(self, conn: PeerConnection) -> None:
        """``conn`` is closing or gone: the next dial to its node makes a new connection (its
        closing or draining period runs on, see :attr:`PeerConnection.closing`)."""
        if conn.remote_node_id is not None and conn.alpn is not None:
            key = (conn.remote_node_id, conn.alpn)
            if self._pool.get(key) is conn:
                del self._pool[key]
        for key in [k for k, v in self._pool.items() if v is conn]:
            del self._pool[key]

    # -- shutdown ---------------------------------------------------------------

    async def close(self, *, timeout: float = 2.0) -> None:
        """Close every connection (CONNECTION_CLOSE to each peer), then the socket."""
        if self._closed:
            return
        self._closing = True
        if self._proactive_timer is not None:  # the startup resets not sent yet: never
            self._proactive_timer.cancel()
            self._proactive_timer = None
        self._proactive = []
        self._forget_prepared()
        for watch in list(self._relay_watches):
            watch.cancel()
        self.router.stop_routing()
        relay, self._relay = self._relay, None
        if relay is not None:
            await relay.close()
        conns = list(self._connections)
        for conn in conns:
            conn.close(0, "endpoint closing")
        if conns:
            await asyncio.wait([asyncio.ensure_future(c.wait_closed()) for c in conns], timeout=timeout)
        for conn in list(self._connections):
            conn.abort(ConnectionClosed("endpoint closed"))
        if self._peer_state_timer is not None:
            self._peer_state_timer.cancel()
            self._peer_state_timer = None
        # the peers were told (CONNECTION_CLOSE): the file is left with nothing to reset (and
        # the refresh timer is cancelled)
        self._write_peer_state()
        self._closed = True
        self.router.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<Endpoint {self.node_id}>"

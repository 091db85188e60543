"""Prometheus metrics of a node, its HTTP/3 server and a relay, read from the layers' own counters.

The layers below keep plain integer counters (:class:`~asgi_p2p.paths.stats.PathStats`,
:class:`~asgi_p2p.endpoint.admission.AdmissionStats`, the relay's stats, ...); the
collectors here read them when Prometheus scrapes, so the data path pays nothing for
metrics but an integer increment.  Only the HTTP server reports each request as it ends
(:class:`HttpMetrics`, a :class:`~asgi_p2p.http.observe.RequestObserver`), for the
latency histogram.

Every label has a bounded set of values (path kinds, outcomes, reasons, HTTP methods
and statuses): a node id is never a label.  ``docs/ops/README.md`` lists every metric.

::

    registry = CollectorRegistry()
    registry.register(NodeCollector(node))
    HttpMetrics(registry).observe(server)
"""

from __future__ import annotations

import bisect
import collections
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import fields
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..relay.client import RelayClient, RelayClientStats
from ..relay.fleet import RelayFleet

if TYPE_CHECKING:
    from ..endpoint.endpoint import Endpoint
    from ..http.server import H3Server
    from ..relay.server import RelayServer

__all__ = [
    "DATAGRAM_SIZE_BUCKETS",
    "HTTP_METHODS",
    "RTT_BUCKETS",
    "HttpMetrics",
    "NodeCollector",
    "RelayServerCollector",
]

#: upper bounds of the connection RTT gauge histogram, seconds
RTT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: upper bounds of the connection datagram size gauge histogram, bytes (the sizes probing tries)
DATAGRAM_SIZE_BUCKETS = (1200, 1452, 4096, 8952, 16384, 32768, 65507)
#: methods counted by name; any other is counted as ``other`` (the label set stays bounded)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
#: latency histogram bounds, seconds
HTTP_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_PATHS = ("direct", "relay")


def _fleet_metrics(fleet: RelayFleet) -> Iterator[Metric]:
    """Home relay moves and extra relay connections of a node with several relays."""
    st = fleet.stats
    moves = _counter("asgi_p2p_relay_home_moves", "Home relay moves (several relays), by reason", ["reason"])
    first = st.home_moves - st.rehomes - st.faster
    for reason, value in (("first", first), ("faster", st.faster), ("lost", st.rehomes)):
        moves.add_metric([reason], value)
    yield moves
    extra = _gauge("asgi_p2p_relay_extra_connections", "Connections to peers' home relays outside the list")
    extra.add_metric([], len(fleet.extra))
    yield extra
    events = _counter("asgi_p2p_relay_extra_events", "Extra relay connections opened, closed, refused", ["event"])
    for event, value in (("opened", st.extra_opened), ("closed", st.extra_closed), ("refused", st.extra_refused)):
        events.add_metric([event], value)
    yield events


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _gauge_histogram(
    name: str, doc: str, samples: dict[str, list[float]], bounds: tuple[float, ...]
) -> GaugeHistogramMetricFamily:
    family = GaugeHistogramMetricFamily(name, doc, labels=["path"])
    for path in _PATHS:
        values = samples[path]
        buckets = [(f"{b:g}", float(sum(1 for v in values if v <= b))) for b in bounds]
        buckets.append(("+Inf", float(len(values))))
        family.add_metric([path], buckets, gsum_value=float(sum(values)))
    return family


class NodeCollector(Collector):
    """Connections, handshakes, paths, datagrams, disco probes and relay link of one endpoint."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def collect(self) -> Iterator[Metric]:
        ep = self.endpoint
        router = ep.router
        paths = router.stats
        admission = ep.admission_stats

        connections = _gauge(
            "asgi_p2p_connections", "Established peer connections by the path their packets take now", ["path"]
        )
        rtts: dict[str, list[float]] = {p: [] for p in _PATHS}
        sizes: dict[str, list[float]] = {p: [] for p in _PATHS}
        for conn in ep.connections:
            if conn.is_relay_connection:  # the home relay's own connection: not a peer
                continue
            path_kind = conn.path.kind
            rtts[path_kind].append(conn.smoothed_rtt)
            sizes[path_kind].append(float(conn.datagram_size))
        for kind in _PATHS:
            connections.add_metric([kind], len(rtts[kind]))
        yield connections
        yield _gauge_histogram(
            "asgi_p2p_connection_rtt_seconds",
            "QUIC smoothed RTT of the established peer connections, by path kind (at scrape time)",
            rtts,
            RTT_BUCKETS,
        )
        yield _gauge_histogram(
            "asgi_p2p_connection_datagram_size_bytes",
            "UDP payload size the established peer connections build, by path kind (at scrape time)",
            sizes,
            DATAGRAM_SIZE_BUCKETS,
        )
        handshaking = _gauge("asgi_p2p_handshaking", "Accepted connections still in their handshake")
        handshaking.add_metric([], ep.handshaking)
        yield handshaking

        outcomes = _counter(
            "asgi_p2p_handshakes",
            "What the node did with connection attempts (Initial packets), by outcome",
            ["outcome"],
        )
        for outcome, value in (
            ("accepted", admission.accepted),
            ("established", admission.established),
            ("retry", admission.retries),
            ("refused", admission.refused),
            ("dropped_busy", admission.dropped_busy),
            ("invalid_token", admission.invalid_tokens),
            ("undecryptable", admission.undecryptable),
            ("dropped_at_once", admission.dropped_at_once),
            ("timed_out", admission.handshake_timeouts),
        ):
            outcomes.add_metric([outcome], value)
        yield outcomes
        refusals = _counter(
            "asgi_p2p_handshake_refusals", "Connections refused, by the limit or rule that refused them", ["reason"]
        )
        for reason in (
            "max_connections",
            "max_connections_per_address",
            "max_connections_per_node",
            "handshake_rate_per_address",
            "not_allowed",
        ):
            refusals.add_metric([reason], admission.refused_by_reason.get(reason, 0))
        refusals.add_metric(["handshake_rate_retry"], admission.rate_limited)
        yield refusals

        switches = _counter("asgi_p2p_path_switches", "Changes of a peer's chosen path, by the new path kind", ["to"])
        for kind in _PATHS:
            switches.add_metric([kind], paths.path_switches.get(kind, 0))
        yield switches

        packets = _counter("asgi_p2p_datagrams", "Datagrams sent and received, by path kind", ["direction", "path"])
        nbytes = _counter(
            "asgi_p2p_datagram_bytes", "UDP payload bytes sent and received, by path kind", ["direction", "path"]
        )
        for direction, path, n, b in (
            ("sent", "direct", paths.direct_packets_sent, paths.direct_bytes_sent),
            ("received", "direct", paths.direct_packets_received, paths.direct_bytes_received),
            ("sent", "relay", paths.relay_packets_sent, paths.relay_bytes_sent),
            ("received", "relay", paths.relay_packets_received, paths.relay_bytes_received),
        ):
            packets.add_metric([direction, path], n)
            nbytes.add_metric([direction, path], b)
        yield packets
        yield nbytes
        unroutable = _counter("asgi_p2p_unroutable_datagrams", "Datagrams with no live direct path and no relay")
        unroutable.add_metric([], router.unroutable_datagrams)
        yield unroutable

        validated = _counter(
            "asgi_p2p_handshake_validated_paths", "Direct paths a transport handshake proved live (no disco probe)"
        )
        validated.add_metric([], paths.handshake_validated_paths)
        yield validated
        disco = _counter("asgi_p2p_disco_probes", "Disco path probes, by event", ["event"])
        disco.add_metric(["ping_sent"], paths.disco_pings_sent)
        disco.add_metric(["ping_answered"], paths.disco_pings_answered)
        disco.add_metric(["pong_received"], paths.disco_pongs_received)
        yield disco
        rejected = _counter("asgi_p2p_disco_rejected", "Disco packets refused, by reason", ["reason"])
        for reason in ("forged", "replayed", "stale", "malformed", "unexpected"):
            rejected.add_metric([reason], paths.disco_rejected.get(reason, 0))
        rejected.add_metric(["no_connection"], router.dropped_disco)
        yield rejected

        relay = ep.relay
        if relay is not None:
            up = _gauge("asgi_p2p_relay_connected", "1 while the home relay is connected (only with a relay)")
            up.add_metric([], 1 if relay.connected else 0)
            yield up
            errors = _counter(
                "asgi_p2p_relay_refusals", "Refusals the home relay reported (rate limits, unknown nodes)"
            )
            errors.add_metric([], router.relay_errors)
            yield errors
            if isinstance(relay, RelayFleet):
                yield from _fleet_metrics(relay)
            clients = list(relay.clients.values()) if isinstance(relay, RelayFleet) else [relay]
            stats = [c.stats for c in clients if isinstance(c, RelayClient)]
            if stats:
                st = RelayClientStats(**{f.name: sum(getattr(x, f.name) for x in stats) for f in fields(stats[0])})
                events = _counter("asgi_p2p_relay_link_events", "Home relay connection events", ["event"])
                for event, value in (
                    ("connected", st.connects),
                    ("disconnected", st.disconnects),
                    ("connect_failed", st.connect_failures),
                    ("auth_failed", st.auth_failures),
                    ("keepalive_timeout", st.keepalive_timeouts),
                ):
                    events.add_metric([event], value)
                yield events
                drops = _counter(
                    "asgi_p2p_relay_link_drops", "Packets for the home relay dropped, by reason", ["reason"]
                )
                for reason, value in (
                    ("disconnected", st.dropped_disconnected),
                    ("too_large", st.dropped_too_large),
                    ("queue_full", st.dropped_queue_full),
                    ("invalid", st.dropped_invalid),
                ):
                    drops.add_metric([reason], value)
                yield drops


class RelayServerCollector(Collector):
    """Clients, forwarded traffic, drops and directory of a :class:`~asgi_p2p.relay.server.RelayServer`."""

    def __init__(self, server: RelayServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server = self.server
        st = server.stats
        rt = server.router_stats
        clients = _gauge("asgi_p2p_relay_clients", "Clients registered with this relay")
        clients.add_metric([], len(server.clients))
        yield clients
        forwarded = _counter("asgi_p2p_relay_forwarded_packets", "Packets this relay forwarded between clients")
        forwarded.add_metric([], rt.forwarded_packets)
        yield forwarded
        forwarded_bytes = _counter("asgi_p2p_relay_forwarded_bytes", "Bytes of the packets this relay forwarded")
        forwarded_bytes.add_metric([], rt.forwarded_bytes)
        yield forwarded_bytes
        signals = _counter("asgi_p2p_relay_signals", "Hole-punching signals this relay forwarded")
        signals.add_metric([], rt.signals)
        yield signals
        drops = _counter("asgi_p2p_relay_dropped", "Packets this relay dropped, by reason", ["reason"])
        for reason, value in (
            ("rate_limited", rt.dropped_rate_limited),
            ("unknown_destination", rt.dropped_unknown_destination),
            ("too_large", rt.dropped_too_large + st.dropped_too_large),
            ("destination_busy", rt.dropped_destination_busy),
            ("relay_busy", rt.dropped_relay_busy),
            ("queue_full", st.dropped_queue_full),
            ("gone", st.dropped_gone),
        ):
            drops.add_metric([reason], value)
        yield drops
        plane = server.plane_stats
        datagrams = _counter(
            "asgi_p2p_relay_plane_datagrams", "Datagrams on this relay's UDP data plane, by event", ["event"]
        )
        for event, value in (
            ("received", plane.received),
            ("sent", plane.sent),
            ("hello", plane.hellos),
            ("dropped_unknown_token", plane.dropped_unknown_token),
            ("dropped_wrong_address", plane.dropped_wrong_address),
            ("dropped_malformed", plane.dropped_malformed),
        ):
            datagrams.add_metric([event], value)
        yield datagrams
        first = server.first_contact_stats
        contacts = _counter(
            "asgi_p2p_relay_first_contacts",
            "First contacts (a fresh dial's Initial before the relay handshake, a returning client's 0-RTT "
            "packets behind it) and their answers, by event",
            ["event"],
        )
        for f in fields(first):
            contacts.add_metric([f.name], getattr(first, f.name))
        yield contacts
        conns = _counter("asgi_p2p_relay_client_connections", "Client connections of this relay, by event", ["event"])
        for event, value in (
            ("accepted", st.connections_accepted),
            ("closed", st.connections_closed),
            ("refused_full", st.refused_full),
            ("protocol_violation", st.protocol_violations),
        ):
            conns.add_metric([event], value)
        yield conns
        directory = server.directory
        if directory is not None:
            records = _gauge("asgi_p2p_directory_records", "Node records the directory holds")
            records.add_metric([], len(directory.directory))
            yield records
            answered = _counter("asgi_p2p_directory_requests", "Directory requests answered, by status", ["status"])
            for status, value in directory.answered.items():
                answered.add_metric([status.name.lower()], value)
            yield answered


class HttpMetrics(Collector):
    """Requests of an :class:`~asgi_p2p.http.H3Server`: counts, latency, in flight, refusals.

    A :class:`~asgi_p2p.http.observe.RequestObserver` (:meth:`observe` attaches it to a
    server) and a collector: each request costs a few integer increments and one bisect
    into the latency buckets; the metric families are built when Prometheus scrapes.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        #: (method, status) -> requests answered
        self.requests: collections.Counter[tuple[str, int]] = collections.Counter()
        #: method -> [count per latency bucket (the last: above every bound)], sum of seconds
        self._latency: dict[str, tuple[list[int], list[float]]] = {}
        self.in_flight = 0
        self.websockets_in_flight = 0
        #: "accepted" / "denied" -> WebSocket sessions that ended
        self.websockets: collections.Counter[str] = collections.Counter()
        #: status -> requests answered without the application
        self.refusals: collections.Counter[int] = collections.Counter()
        if registry is not None:
            registry.register(self)

    def observe(self, server: H3Server) -> HttpMetrics:
        """Report ``server``'s requests here from now on."""
        server.observer = self
        return self

    # -- RequestObserver ------------------------------------------------------------

    def request_started(self, kind: str) -> None:
        if kind == "websocket":
            self.websockets_in_flight += 1
        else:
            self.in_flight += 1

    def request_finished(self, kind: str, method: str, status: int, seconds: float) -> None:
        if kind == "websocket":
            self.websockets_in_flight -= 1
            self.websockets["accepted" if status == 200 else "denied"] += 1
            return
        self.in_flight -= 1
        if method not in HTTP_METHODS:
            method = "other"
        self.requests[method, status] += 1
        latency = self._latency.get(method)
        if latency is None:
            latency = self._latency[method] = ([0] * (len(HTTP_LATENCY_BUCKETS) + 1), [0.0])
        latency[0][bisect.bisect_left(HTTP_LATENCY_BUCKETS, seconds)] += 1
        latency[1][0] += seconds

    def request_refused(self, status: int) -> None:
        self.refusals[status] += 1

    # -- Collector ----------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        requests = _counter(
            "asgi_p2p_http_requests",
            "HTTP requests the application answered, by method and status (none: cut before a response)",
            ["method", "status"],
        )
        for (method, status), n in sorted(self.requests.items()):
            requests.add_metric([method, str(status) if status else "none"], n)
        yield requests
        latency = HistogramMetricFamily(
            "asgi_p2p_http_request_duration_seconds",
            "Seconds from a request reaching the application to the end of its task, by method",
            labels=["method"],
        )
        for method, (counts, total) in sorted(self._latency.items()):
            cumulative = list(itertools.accumulate(counts))
            buckets = [(f"{b:g}", float(c)) for b, c in zip(HTTP_LATENCY_BUCKETS, cumulative, strict=False)]
            buckets.append(("+Inf", float(cumulative[-1])))
            latency.add_metric([method], buckets, sum_value=total[0])
        yield latency
        in_flight = _gauge("asgi_p2p_http_requests_in_flight", "HTTP requests in flight")
        in_flight.add_metric([], self.in_flight)
        yield in_flight
        ws_in_flight = _gauge("asgi_p2p_http_websockets_in_flight", "WebSocket sessions in flight")
        ws_in_flight.add_metric([], self.websockets_in_flight)
        yield ws_in_flight
        websockets = _counter(
            "asgi_p2p_http_websockets", "WebSocket sessions that ended, by the application's answer", ["outcome"]
        )
        for outcome in ("accepted", "denied"):
            websockets.add_metric([outcome], self.websockets[outcome])
        yield websockets
        refusals = _counter(
            "asgi_p2p_http_refusals",
            "Requests answered without the application (413, 429, 431, 503, ...), by status",
            ["status"],
        )
        # present (at 0) before the first refusal, so that rates and alerts see a series
        for status in sorted({413, 429, 431, 503, *self.refusals}):
            refusals.add_metric([str(status)], self.refusals[status])
        yield refusals


class HttpServerCollector(Collector):
    """The HTTP server's own counters (application errors, timeouts, 429s), read at scrape time."""

    def __init__(self, server: H3Server) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server = self.server
        errors = _counter("asgi_p2p_http_app_errors", "Requests whose application raised")
        errors.add_metric([], server.app_errors)
        yield errors
        timeouts = _counter("asgi_p2p_http_timeouts", "Requests answered 408 (or reset): headers or body too slow")
        timeouts.add_metric([], server.requests_timed_out)
        yield timeouts
        limited = _counter(
            "asgi_p2p_http_peer_limited", "Requests answered 429: their peer went over its rate or concurrency limit"
        )
        limited.add_metric([], server.requests_limited)
        yield limited
        peers = _gauge("asgi_p2p_http_peers_active", "Peers with requests in flight")
        peers.add_metric([], len(server.peer_requests))
        yield peers

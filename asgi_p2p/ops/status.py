"""What ``asgi-p2p status`` shows: this node, its listeners, its relay and every peer connection.

:func:`node_status` builds a JSON-serializable dict from a live endpoint; times are
seconds (``connected_seconds``: how long ago the connection was established), so the
library reads no wall clock.  :func:`format_status` renders it for people.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..endpoint.endpoint import Endpoint
from ..identity import NodeId

__all__ = ["format_bytes", "format_duration", "format_status", "node_status"]


def _fmt_addr(addr: tuple[str, int]) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def node_status(
    endpoint: Endpoint,
    *,
    labels: Callable[[NodeId], str | None] | None = None,
    listeners: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The state of ``endpoint``: node id, listeners, relay, peers (one row per connection)."""
    now = asyncio.get_running_loop().time()
    relay_url = None
    relay: dict[str, Any] | None = None
    link = endpoint.relay
    if link is not None:
        relay_url = link.relay_url
        seen = link.observed_address
        relay = {
            "url": link.relay_url,
            "connected": link.connected,
            "observed_address": _fmt_addr(seen) if seen is not None else None,
        }
    peers: list[dict[str, Any]] = []
    relays: list[dict[str, Any]] = []
    for conn in endpoint.connections:
        node_id = conn.remote_node_id
        if node_id is None:
            continue
        path = conn.path
        kind = "direct" if path.kind == "direct" else "relayed"
        if kind == "direct":
            addr = path.addr if path.addr is not None else conn.direct_address
            address = _fmt_addr(addr) if addr is not None else None
        else:
            address = relay_url
        row = {
            "node_id": str(node_id),
            "label": labels(node_id) if labels is not None else None,
            "alpn": conn.alpn,
            "direction": "out" if conn.is_client else "in",
            "path": kind,
            "address": address,
            "rtt_ms": round(conn.smoothed_rtt * 1000, 3),
            "bytes_sent": conn.bytes_sent,
            "bytes_received": conn.bytes_received,
            "connected_seconds": round(now - conn.established_at, 3) if conn.established_at is not None else None,
        }
        if conn.is_relay_connection and conn.is_client:  # our connection to our relay
            row["path"] = "direct"
            relays.append(row)
        else:
            peers.append(row)
    host, port = endpoint.local_address[0], endpoint.local_address[1]
    return {
        "node_id": str(endpoint.node_id),
        "listeners": [{"kind": "udp", "address": _fmt_addr((host, port))}, *(listeners or [])],
        "relay": relay,
        "relay_connections": relays,
        "peers": peers,
    }


def format_bytes(n: int) -> str:
    """``512 B``, ``1.5 kB``, ``12.0 MB`` (powers of 1000)."""
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("kB", "MB", "GB"):
        value /= 1000
        if value < 1000 or unit == "GB":
            break
    return f"{value:.1f} {unit}"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_status(status: dict[str, Any]) -> str:
    """``asgi-p2p status`` for people: a summary, then one line per peer connection."""
    lines = [f"node id    {status['node_id']}"]
    for listener in status["listeners"]:
        lines.append(f"listening  {listener['kind']} {listener['address']}")
    relay = status.get("relay")
    if relay is None:
        lines.append("relay      none")
    else:
        state = "connected" if relay["connected"] else "NOT connected"
        seen = f", sees us at {relay['observed_address']}" if relay.get("observed_address") else ""
        lines.append(f"relay      {relay['url']} ({state}{seen})")
    peers = status["peers"]
    distinct = len({p["node_id"] for p in peers})
    lines.append(f"peers      {distinct} peer(s), {len(peers)} connection(s)")
    for p in peers:
        label = f"  ({p['label']})" if p.get("label") else ""
        lines.append(f"  {p['node_id']}{label}")
        lines.append(
            f"      {p['path']} {p['address'] or '-'}  rtt {p['rtt_ms']:.1f} ms  "
            f"sent {format_bytes(p['bytes_sent'])}  received {format_bytes(p['bytes_received'])}  "
            f"{p['direction']} {p['alpn']}  since {p.get('since') or format_duration(p['connected_seconds'])}"
        )
    return "\n".join(lines)

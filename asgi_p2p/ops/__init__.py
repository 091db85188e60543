"""Operating a node.

* :mod:`asgi_p2p.ops.metrics`, :mod:`asgi_p2p.ops.server` - Prometheus metrics and
  ``/metrics``, ``/healthz``, ``/readyz`` of a node, its HTTP/3 server and a relay on a
  local TCP address (:func:`start_metrics_server`; see ``docs/ops/README.md``).
* :mod:`asgi_p2p.ops.admin` - a unix socket (mode 0600, same user only) speaking JSON
  lines; commands register on it (:meth:`AdminServer.register`).
* :mod:`asgi_p2p.ops.status` - what ``asgi-p2p status`` prints: peers, paths, relay, listeners.
* :mod:`asgi_p2p.ops.allowfile` - the persistent allow-file, changed live.
* :mod:`asgi_p2p.ops.pairing` - invites and the pairing exchange (ALPN ``asgi-p2p-pair/1``).
"""

from .metrics import HttpMetrics, NodeCollector, RelayServerCollector
from .server import Health, MetricsServer, parse_listen_address, start_metrics_server

__all__ = [
    "Health",
    "HttpMetrics",
    "MetricsServer",
    "NodeCollector",
    "RelayServerCollector",
    "parse_listen_address",
    "start_metrics_server",
]

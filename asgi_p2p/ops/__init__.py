"""Operating a node: Prometheus metrics, health and readiness checks.

:func:`start_metrics_server` serves ``/metrics``, ``/healthz`` and ``/readyz`` of a
node, its HTTP/3 server and a relay on a local TCP address (see ``docs/ops/README.md``).
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

"""``--metrics HOST:PORT`` and ``--metrics-allow-public``, shared by the commands that run a node.

A command adds the flags with :func:`add_metrics_args` and, once its node (and server)
exist, starts the listener with :func:`start_metrics` (None without ``--metrics``)::

    metrics = await _metrics.start_metrics(args, endpoint=node, http=server)
    ...
    if metrics is not None:
        await metrics.close()
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import (
    DEFAULT_LIMIT_PEER_CONCURRENCY,
    DEFAULT_LIMIT_PEER_RATE,
    LIMITS,
    PEER_CONCURRENCY_LIMIT,
    PEER_RATE_LIMIT,
    Limit,
    NetworkConfig,
)
from ..errors import InvalidConfiguration

if TYPE_CHECKING:
    from ..ops.server import MetricsServer

__all__ = [
    "add_connection_limit_args",
    "add_metrics_args",
    "add_peer_limit_args",
    "check_metrics_args",
    "connection_limit_overrides",
    "peer_limit_kwargs",
    "start_metrics",
]


def add_metrics_args(p: argparse.ArgumentParser | Any) -> None:
    """Add ``--metrics`` and ``--metrics-allow-public`` to a parser (or an argument group)."""
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics, with /healthz and /readyz "
        "(e.g. 127.0.0.1:9464; off by default; loopback only unless --metrics-allow-public)",
    )
    p.add_argument(
        "--metrics-allow-public",
        action="store_true",
        help="let --metrics listen on a non-loopback address (firewall it: metrics describe your traffic)",
    )


def check_metrics_args(args: argparse.Namespace) -> None:
    """Refuse a bad ``--metrics`` before anything starts (raises InvalidConfiguration)."""
    if args.metrics is not None:
        from ..ops.server import parse_listen_address

        parse_listen_address(args.metrics, allow_public=args.metrics_allow_public)


async def start_metrics(args: argparse.Namespace, **targets: Any) -> MetricsServer | None:
    """Start the metrics listener for ``targets`` (``endpoint=``, ``http=``, ``relay=``) if ``--metrics``."""
    if args.metrics is None:
        return None
    from ..ops.server import start_metrics_server

    return await start_metrics_server(args.metrics, allow_public=args.metrics_allow_public, **targets)


class _LimitArg:
    """An argparse ``type`` checking a value against a :class:`Limit` (``range_text`` for the settings table)."""

    def __init__(self, limit: Limit, name: str) -> None:
        self.limit = limit
        self.name = name
        self.__name__ = "limit"

    def range_text(self) -> str:
        return self.limit.range_text()

    def __call__(self, text: str) -> float:
        limit = self.limit
        try:
            value: float = int(text) if limit.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {limit.describe()}, got {text!r}") from None
        try:
            limit.check(self.name, value)
        except InvalidConfiguration as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value


def _limit_or_off(limit: Limit, name: str) -> Callable[[str], float]:
    return _LimitArg(limit, name)


def add_peer_limit_args(p: argparse.ArgumentParser | Any) -> None:
    """Add ``--limit-peer-rate`` and ``--limit-peer-concurrency`` (HTTP requests per node id)."""
    p.add_argument(
        "--limit-peer-rate",
        type=_limit_or_off(PEER_RATE_LIMIT, "--limit-peer-rate"),
        metavar="N",
        help=f"requests one peer (node id) may start per second, bursts of twice that; more are answered 429 "
        f"with retry-after (default: {DEFAULT_LIMIT_PEER_RATE:g}; 0: off)",
    )
    p.add_argument(
        "--limit-peer-concurrency",
        type=_limit_or_off(PEER_CONCURRENCY_LIMIT, "--limit-peer-concurrency"),
        metavar="N",
        help=f"requests and WebSockets one peer may have in flight; more are answered 429 "
        f"(default: {DEFAULT_LIMIT_PEER_CONCURRENCY}; 0: off)",
    )


def peer_limit_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The H3Server keyword arguments the per-peer limit flags set (none when not given)."""
    kwargs: dict[str, Any] = {}
    if args.limit_peer_rate is not None:
        kwargs["limit_peer_rate"] = args.limit_peer_rate
    if args.limit_peer_concurrency is not None:
        kwargs["limit_peer_concurrency"] = int(args.limit_peer_concurrency)
    return kwargs


#: NetworkConfig fields with a flag of the same name (``--max-connections-per-node``)
_CONNECTION_LIMITS = {
    "max_connections_per_node": "established connections one node id may have; more are closed after the handshake",
    "handshake_rate_per_address": "new handshakes accepted per second per source address, bursts of twice that; "
    "beyond it a Retry, then a refusal",
}


def add_connection_limit_args(p: argparse.ArgumentParser | Any) -> None:
    """Add ``--max-connections-per-node`` and ``--handshake-rate-per-address`` (NetworkConfig fields)."""
    for name, what in _CONNECTION_LIMITS.items():
        limit = LIMITS[name]
        assert isinstance(limit, Limit)
        default = NetworkConfig.__dataclass_fields__[name].default
        off = "; 0: off" if limit.zero_is_off else ""
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=_limit_or_off(limit, "--" + name.replace("_", "-")),
            metavar="N",
            help=f"{what} (default: {default:g}{off})",
        )


def connection_limit_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The NetworkConfig overrides the connection limit flags set (none when not given)."""
    return {name: getattr(args, name) for name in _CONNECTION_LIMITS if getattr(args, name, None) is not None}

"""``asgi-p2p proxy URL``: expose any local HTTP server (TCP or unix socket) to peers over HTTP/3.

It serves :class:`asgi_p2p.gateway.proxy.ProxyApp` exactly as ``asgi-p2p serve`` serves an
ASGI app, so tickets, the allow-list, the relay, hole punching and discovery work the same.
"""

from __future__ import annotations

import argparse

from . import _common
from ._common import configure_logging, positive_float, positive_int

__all__ = ["add_proxy_args", "run_proxy", "subcommands"]


def subcommands() -> dict[str, _common.Subcommand]:
    return {
        "proxy": (
            "expose a local HTTP server (http://HOST:PORT or unix:/path.sock) to peers over HTTP/3",
            add_proxy_args,
            run_proxy,
        )
    }


def add_proxy_args(p: argparse.ArgumentParser) -> None:
    from .serve import add_server_args

    p.add_argument(
        "backend",
        metavar="URL",
        help="the server to expose: http://127.0.0.1:8000[/prefix] or unix:/run/app.sock (HTTP/1.1, no TLS)",
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=60.0,
        metavar="SECONDS",
        help="backend connect / first-response-byte / between-chunks timeout; no answer in time -> 504 (default 60)",
    )
    p.add_argument(
        "--max-connections",
        type=positive_int,
        default=100,
        metavar="N",
        help="backend connections at most (default 100)",
    )
    p.add_argument(
        "--peer-id-header",
        default="X-P2P-Peer-Id",
        metavar="NAME",
        help="request header naming the caller's proven node id (default X-P2P-Peer-Id; any copy from the peer "
        "is removed)",
    )
    p.add_argument("--no-forwarded", action="store_true", help="do not add the RFC 7239 Forwarded header")
    p.add_argument(
        "--preserve-host", action="store_true", help="send the peer's :authority as Host instead of the backend's"
    )
    add_server_args(p)
    p.set_defaults(root_path="", lifespan="on")


def run_proxy(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, **_common.log_options(args))
    _common.require_http()
    from ..gateway.proxy import ProxyApp
    from .serve import serve_app

    app = ProxyApp(
        args.backend,
        timeout=args.timeout,
        max_connections=args.max_connections,
        peer_id_header=args.peer_id_header,
        forwarded=not args.no_forwarded,
        preserve_host=args.preserve_host,
    )
    return serve_app(lambda: app, args, f"proxy to {args.backend}")

"""``asgi-p2p relay``: run a relay for nodes that cannot reach each other directly.

The relay is a node like any other: it has a key (``--key-file``, created 0600
if missing, or ``--ephemeral``), and its URL ``p2p-relay://NODE_ID@HOST:PORT``
names that key, so clients refuse anyone else answering at the address.  It
forwards end-to-end-encrypted packets between its clients by NodeId and never
sees what they carry.  The same UDP port serves the node-record directory
(ALPN ``asgi-p2p/directory/1``) unless ``--no-directory``.  SIGINT or SIGTERM
closes every client connection and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs

from ..errors import InvalidConfiguration, P2PError
from . import _common, _ops, ops
from ._common import configure_logging, positive_float, positive_int

if TYPE_CHECKING:
    from ..config import NetworkConfig
    from ..identity import SecretKey
    from ..relay.proto import RelayLimits

__all__ = ["add_relay_args", "default_directory_db", "run_relay", "subcommands"]

log = logging.getLogger("asgi_p2p.cli")


def subcommands() -> dict[str, _common.Subcommand]:
    """The commands this module adds to ``asgi-p2p`` (consumed by :func:`asgi_p2p.cli.main`)."""
    return {
        "relay": ("run a relay for nodes that cannot reach each other directly", add_relay_args, run_relay),
    }


def default_directory_db(node_id: str) -> Path:
    """Where a relay with key ``node_id`` keeps its directory when ``--directory-db`` is not given."""
    return Path(platformdirs.user_data_dir("asgi-p2p")) / f"relay-directory-{node_id}.sqlite3"


def add_relay_args(p: argparse.ArgumentParser) -> None:
    from ..discovery.records import Directory
    from ..relay.proto import RelayLimits
    from ..relay.server import RELAY_DATAGRAM_SIZE

    defaults = RelayLimits()
    dir_defaults = Directory()
    _common.add_node_args(
        p,
        key_file_note="; the relay URL names this key, so keep it to keep the URL",
        ephemeral_help="use a new random identity (a new URL every run)",
    )
    p.add_argument(
        "--public-host",
        metavar="HOST",
        help="host to put in the printed URL (default: --host; set it when binding 0.0.0.0 or behind a NAT)",
    )
    p.add_argument(
        "--tcp-port",
        type=_common.port_number,
        metavar="PORT",
        help="also serve the relay over TCP on PORT (TLS 1.3 + WebSocket, for clients whose network blocks "
        "UDP; 0 picks a free port); the URL then ends in ?tcp=PORT (default: UDP only)",
    )
    p.add_argument(
        "--tls-cert",
        metavar="PATH",
        help="PEM certificate (chain) for the TCP listener (default: self-signed from the relay's key; clients "
        "check the relay's key either way)",
    )
    p.add_argument("--tls-key", metavar="PATH", help="PEM private key of --tls-cert")
    p.add_argument(
        "--limit-clients",
        type=positive_int,
        default=defaults.max_clients,
        metavar="N",
        help=f"most connected clients; more are refused with a 'relay full' error (default: {defaults.max_clients})",
    )
    p.add_argument(
        "--limit-packets-per-second",
        type=positive_float,
        default=defaults.packets_per_second,
        metavar="N",
        help=f"packets each client may send per second (default: {defaults.packets_per_second:g}; burst 2x)",
    )
    p.add_argument(
        "--limit-bytes-per-second",
        type=positive_float,
        default=defaults.bytes_per_second,
        metavar="N",
        help=f"bytes each client may send per second (default: {defaults.bytes_per_second:g}; burst 2x)",
    )
    p.add_argument(
        "--limit-destination-packets-per-second",
        type=positive_float,
        default=defaults.destination_packets_per_second,
        metavar="N",
        help="packets each client may receive per second from all sources together; when exceeded, "
        f"its sources share it fairly (default: {defaults.destination_packets_per_second:g}; burst 2x)",
    )
    p.add_argument(
        "--limit-destination-bytes-per-second",
        type=positive_float,
        default=defaults.destination_bytes_per_second,
        metavar="N",
        help="bytes each client may receive per second from all sources together "
        f"(default: {defaults.destination_bytes_per_second:g}; burst 2x)",
    )
    p.add_argument(
        "--limit-queued-bytes",
        type=positive_int,
        default=defaults.max_queued_bytes,
        metavar="BYTES",
        help="memory for packets waiting for their destination's budget, all destinations together "
        f"(default: {defaults.max_queued_bytes}; per destination "
        f"{defaults.destination_queue_bytes} or this, whichever is smaller)",
    )
    p.add_argument(
        "--max-datagram-size",
        type=positive_int,
        metavar="BYTES",
        help=f"UDP payload size the relay builds from the start (default: {RELAY_DATAGRAM_SIZE}, one full "
        "1200-byte QUIC packet plus relay and QUIC overhead; every client<->relay path must carry it)",
    )
    directory = p.add_argument_group("node-record directory (ALPN asgi-p2p/directory/1, on the same port)")
    directory.add_argument(
        "--no-directory",
        action="store_true",
        help="do not serve the directory (directory connections are refused)",
    )
    directory.add_argument(
        "--directory-capacity",
        type=positive_int,
        default=dir_defaults.capacity,
        metavar="N",
        help=f"most node records kept; new nodes are refused when full (default: {dir_defaults.capacity})",
    )
    directory.add_argument(
        "--directory-max-ttl",
        type=positive_float,
        default=dir_defaults.max_ttl,
        metavar="SECONDS",
        help=f"longest lifetime a published record may have (default: {dir_defaults.max_ttl:g})",
    )
    directory.add_argument(
        "--directory-max-per-address",
        type=positive_int,
        default=dir_defaults.max_per_address,
        metavar="N",
        help="most records published from one address (IPv4, or IPv6 /64); raise it for publishers "
        f"behind a shared NAT (default: {dir_defaults.max_per_address})",
    )
    db = directory.add_mutually_exclusive_group()
    db.add_argument(
        "--directory-db",
        type=Path,
        metavar="PATH",
        help="SQLite file the records persist in across restarts (default: "
        "USER_DATA_DIR/asgi-p2p/relay-directory-NODE_ID.sqlite3 with the relay's key; none with --ephemeral)",
    )
    db.add_argument("--no-directory-db", action="store_true", help="keep the records in memory only")
    _common.add_log_args(p)
    _common.add_config_arg(p)
    p.add_argument("--url-file", type=Path, metavar="PATH", help="write the relay URL to PATH once serving")
    _ops.add_connection_limit_args(p)
    _ops.add_metrics_args(p)
    ops.add_admin_args(p)


#: The flag each RelayLimits field comes from (bursts are twice the rate; both queue
#: bounds come from --limit-queued-bytes), to name it when the limits are refused.
_LIMIT_FLAGS = {
    "max_clients": "--limit-clients",
    "packets_per_second": "--limit-packets-per-second",
    "packet_burst": "--limit-packets-per-second",
    "bytes_per_second": "--limit-bytes-per-second",
    "byte_burst": "--limit-bytes-per-second",
    "destination_packets_per_second": "--limit-destination-packets-per-second",
    "destination_packet_burst": "--limit-destination-packets-per-second",
    "destination_bytes_per_second": "--limit-destination-bytes-per-second",
    "destination_byte_burst": "--limit-destination-bytes-per-second",
    "destination_queue_bytes": "--limit-queued-bytes",
    "max_queued_bytes": "--limit-queued-bytes",
}


def run_relay(args: argparse.Namespace) -> int:
    from ..relay.proto import RelayLimits
    from ..relay.server import relay_config

    configure_logging(args.log_level, **_common.log_options(args))
    _ops.check_metrics_args(args)
    if (args.tls_cert is not None or args.tls_key is not None) and args.tcp_port is None:
        raise InvalidConfiguration("--tls-cert and --tls-key are for the TCP listener: add --tcp-port")
    try:
        limits = RelayLimits(
            max_clients=args.limit_clients,
            packets_per_second=args.limit_packets_per_second,
            packet_burst=2 * args.limit_packets_per_second,
            bytes_per_second=args.limit_bytes_per_second,
            byte_burst=max(2 * args.limit_bytes_per_second, 65536.0),
            destination_packets_per_second=args.limit_destination_packets_per_second,
            destination_packet_burst=2 * args.limit_destination_packets_per_second,
            destination_bytes_per_second=args.limit_destination_bytes_per_second,
            destination_byte_burst=max(2 * args.limit_destination_bytes_per_second, 65536.0),
            destination_queue_bytes=min(RelayLimits.destination_queue_bytes, args.limit_queued_bytes),
            max_queued_bytes=args.limit_queued_bytes,
        )
    except InvalidConfiguration as exc:
        flag = _LIMIT_FLAGS.get(exc.setting or "")
        hint = f" (set by {flag})" if flag is not None else ""
        raise InvalidConfiguration(f"relay limits: {exc}{hint}", setting=exc.setting) from None
    # NetworkConfig fields from --config (the environment's variables for them win, flags win over both)
    overrides: dict[str, Any] = dict(args.settings.network) if getattr(args, "settings", None) else {}
    if args.max_datagram_size is not None:
        overrides["max_datagram_size"] = args.max_datagram_size
    overrides.update(_ops.connection_limit_overrides(args))
    config = relay_config(args.limit_clients, **overrides)
    key = _common.secret_key(args)
    try:
        return asyncio.run(_relay(key, limits, config, args))
    except P2PError as exc:
        print(f"asgi-p2p: error: {exc}", file=sys.stderr)
        return 1


#: what SIGHUP applies to a running relay: logging (everything else needs a restart)
_LIVE = {"log_level", "log_format", "log_config", "config"}
_NOT_COMPARED = {"command", "settings", "reload_settings", "argv"}


def _reload(args: argparse.Namespace) -> None:
    """SIGHUP: re-read the config file and variables; apply logging, name what needs a restart."""
    reload_settings = getattr(args, "reload_settings", None)
    if reload_settings is None:
        return
    try:
        new, _ = reload_settings()
    except (P2PError, SystemExit) as exc:
        log.error("SIGHUP: reload failed, settings unchanged: %s", exc)
        return
    changed = _common.changed_settings(args, new, _NOT_COMPARED)
    if any(d in _LIVE for d in changed):
        if _common.reconfigure_logging(args, new):
            for dest in _LIVE:
                setattr(args, dest, getattr(new, dest))
            log.info("SIGHUP: logging reconfigured (level %s)", new.log_level)
    restart = [_common.flag_name(d) for d in changed if d not in _LIVE]
    if restart:
        log.warning("SIGHUP: %s changed but cannot change while the relay runs; restart to apply", ", ".join(restart))
    elif not changed:
        log.info("SIGHUP: settings reloaded; nothing changed")


async def _relay(key: SecretKey, limits: RelayLimits, config: NetworkConfig, args: argparse.Namespace) -> int:
    from ..discovery.records import Directory
    from ..discovery.store import SqliteRecordStore
    from ..relay.server import RelayServer
    from ..relay.url import RelayUrl

    stop = asyncio.Event()

    def on_signal(signame: str) -> None:
        log.info("%s: shutting down", signame)
        stop.set()

    with _common.signal_handlers(on_signal), contextlib.ExitStack() as stack:
        directory: Directory | bool = False
        store: SqliteRecordStore | None = None
        if not args.no_directory:
            db_path: Path | None = args.directory_db
            if db_path is None and not args.no_directory_db and not args.ephemeral:
                db_path = default_directory_db(str(key.node_id))
            if db_path is not None:
                store = SqliteRecordStore(db_path)
                stack.callback(store.close)
            try:
                directory = Directory(
                    capacity=args.directory_capacity,
                    max_ttl=args.directory_max_ttl,
                    max_per_address=args.directory_max_per_address,
                    store=store,
                )
            except ValueError as exc:
                raise InvalidConfiguration(f"directory: {exc}") from None
        # records expire on the Unix clock; the library reads only loop.time(), so measure the offset once
        clock_offset = time.time() - asyncio.get_running_loop().time()  # wall-clock ok (CLI edge)
        server = await RelayServer.bind(
            key,
            host=args.host,
            port=args.port,
            limits=limits,
            config=config,
            directory=directory,
            clock_offset=clock_offset,
            tcp_port=args.tcp_port,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
        metrics = None
        admin = None
        try:
            metrics = await _ops.start_metrics(args, relay=server)
            admin = await ops.start_admin(args, server.endpoint, None)
            url = server.url
            if args.public_host:
                url = RelayUrl(url.node_id, args.public_host, url.port, url.tcp_port)
            text = str(url)
            if args.url_file is not None:
                _common.write_atomically(args.url_file, text)
            lines = [
                f"asgi-p2p: relay serving (udp {url.host}:{url.port}"
                + (f", tcp {url.host}:{url.tcp_port} TLS + WebSocket" if url.tcp_port is not None else "")
                + f", up to {limits.max_clients} clients)",
                f"  node id  {server.node_id}",
            ]
            if server.directory is not None:
                d = server.directory.directory
                lines.append(
                    f"  directory serving node records (up to {d.capacity}, {d.max_per_address} per address, "
                    f"ttl at most {d.max_ttl:g} s)"
                )
                kept = f"kept in {store.path} ({len(d)} loaded)" if store is not None else "in memory only"
                lines.append(f"  records  {kept}")
            else:
                lines.append("  directory off (--no-directory)")
            lines.append(f"  url      {text}")
            if admin is not None:
                lines.append(f"  admin    {admin.admin.path} (asgi-p2p status)")
            if server.endpoint.local_address[0] in ("127.0.0.1", "::1"):
                lines.append("  (bound to loopback: only this machine can connect; use --host 0.0.0.0 for others)")
            elif server.endpoint.local_address[0] in ("0.0.0.0", "::") and not args.public_host:
                lines.append("  (bound to a wildcard: pass --public-host with the address clients should use)")
            print("\n".join(lines), flush=True)
            with _common.on_sighup(lambda: _reload(args)):
                await stop.wait()
            stats = server.router_stats
            log.info(
                "relay stopping: %d clients, %d packets (%d bytes) and %d signals forwarded",
                len(server.clients),
                stats.forwarded_packets,
                stats.forwarded_bytes,
                stats.signals,
            )
            return 0
        finally:
            if admin is not None:
                await admin.close()
            if metrics is not None:
                await metrics.close()
            await server.close()

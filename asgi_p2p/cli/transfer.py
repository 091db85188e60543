"""``asgi-p2p send FILE|DIR`` and ``asgi-p2p receive TICKET [-o PATH]``: file transfer between peers.

``send`` hashes the content, serves it (see :mod:`asgi_p2p.gateway.transfer`) and prints a
ticket; it exits once a receiver reports a verified copy (``--keep``: serve until
interrupted).  ``receive`` downloads with a progress bar, resumes staged data with ``Range``
(automatically after a broken connection, and when run again after an interruption),
verifies every sha256 and only then gives the content its final name.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidConfiguration, P2PError
from . import _common
from ._common import configure_logging, describe_error, positive_float

if TYPE_CHECKING:
    from ..identity import NodeAddr

__all__ = ["subcommands"]

log = logging.getLogger("asgi_p2p.cli")


def subcommands() -> dict[str, _common.Subcommand]:
    return {
        "send": ("send a file or directory to a peer: prints a ticket for `asgi-p2p receive`", add_send_args, run_send),
        "receive": (
            "receive what `asgi-p2p send` offers (resumable, sha256-verified, with a progress bar)",
            add_receive_args,
            run_receive,
        ),
    }


# -- send ------------------------------------------------------------------------------------


def add_send_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, metavar="FILE|DIR", help="what to send (a directory: all its regular files)")
    p.add_argument("--keep", action="store_true", help="keep serving after a receiver got it (until interrupted)")
    p.add_argument("--ticket-file", type=Path, metavar="PATH", help="write the ticket to PATH once serving")
    _common.add_node_args(p, ephemeral_help="use a new random identity instead of a key file")
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="NODE_ID",
        help="only this node may receive (repeatable; default: anyone with the ticket)",
    )
    _common.add_relay_arg(p, "home relay (p2p-relay://NODE_ID@HOST:PORT) for receivers that cannot reach us directly")
    _common.add_log_args(p, default_level="warning", config=False)


def run_send(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, **_common.log_options(args))
    _common.require_http()
    from ..errors import InvalidNodeId
    from ..identity import NodeId

    if not args.path.exists():
        raise InvalidConfiguration(f"{args.path}: no such file or directory")
    allow = None
    if args.allow:
        try:
            allow = [NodeId.parse(text) for text in args.allow]
        except InvalidNodeId as exc:
            raise InvalidConfiguration(f"--allow: {exc}") from None
    relay_urls = _common.relay_urls_option(args.relay)
    return asyncio.run(_send(args, allow, relay_urls))


async def _send(args: argparse.Namespace, allow: Any, relay_urls: list[str]) -> int:
    from ..config import NetworkConfig
    from ..gateway.transfer import SendApp, build_manifest
    from ..http import H3Server
    from ..node import Node
    from ..ticket import Ticket

    print(f"asgi-p2p: hashing {args.path} ...", file=sys.stderr, flush=True)
    manifest = await asyncio.to_thread(build_manifest, args.path)
    done = asyncio.Event()
    stopped_by: list[str] = []

    def on_signal(name: str) -> None:
        stopped_by.append(name)
        done.set()

    def on_received(peer: str) -> None:
        print(f"asgi-p2p: {peer} received {manifest.name} and verified it", flush=True)
        if not args.keep:
            done.set()

    with _common.signal_handlers(on_signal):
        key = _common.secret_key(args)
        node = await Node.bind(
            key,
            host=args.host,
            port=args.port,
            allow=allow,
            config=NetworkConfig.from_env(),
            **_common.relay_kwargs(relay_urls),
        )
        try:
            server = H3Server(SendApp(args.path, manifest, on_received=on_received), node, timeout_graceful_shutdown=5)
            await server.startup()
            if node.relay is not None:
                with contextlib.suppress(P2PError, TimeoutError):
                    await node.relay.wait_connected(NetworkConfig.from_env().connect_timeout)
            ticket = Ticket.from_node_addr(node.node_addr()).encode()
            if args.ticket_file is not None:
                _common.write_atomically(args.ticket_file, ticket)
            what = "1 file" if manifest.kind == "file" else f"directory, {len(manifest.files)} files"
            print(
                f"asgi-p2p: sending {manifest.name} ({what}, {_size(manifest.total)})\n"
                f"  sha256   {manifest.files[0].sha256 if manifest.kind == 'file' else manifest.digest}"
                f"{'' if manifest.kind == 'file' else ' (manifest)'}\n"
                f"  receive  asgi-p2p receive {ticket}",
                flush=True,
            )
            if args.host in ("127.0.0.1", "::1", "localhost"):
                print("  (bound to loopback: only this machine can receive; use --host 0.0.0.0 for others)", flush=True)
            await done.wait()
            await server.shutdown()
        finally:
            await node.close()
    return 130 if stopped_by and not args.keep else 0


# -- receive ---------------------------------------------------------------------------------------


def add_receive_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("ticket", metavar="TICKET", help="the ticket `asgi-p2p send` printed")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="PATH",
        help="where to put it (default: the sent name in the current directory; an existing directory: inside it)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--retries",
        type=int,
        default=5,
        metavar="N",
        help="resume this many times after a broken connection (default 5)",
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=30.0,
        metavar="SECONDS",
        help="give up on an attempt after this long without progress (default 30)",
    )
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--key-file", type=Path, metavar="PATH", help="identify with this key (default: ephemeral)")
    keys.add_argument("--ephemeral", action="store_true", help="use a new random identity (the default)")
    _common.add_relay_arg(p, "our relay, for a sender we cannot reach directly (default: the ticket's)")
    _common.add_log_args(p, default_level="warning", config=False)


def run_receive(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, **_common.log_options(args))
    _common.require_http()
    from ..ticket import Ticket

    if args.retries < 0:
        raise InvalidConfiguration("--retries must not be negative")
    try:
        addr = Ticket.parse(args.ticket).to_node_addr()
    except (P2PError, ValueError) as exc:
        raise InvalidConfiguration(f"not a ticket: {describe_error(exc)}") from None
    return asyncio.run(_receive(args, addr))


def _bind_host(addr: NodeAddr) -> str:
    hosts = [h for h, _ in addr.direct_addresses]
    try:
        if hosts and not addr.relay_url and all(ipaddress.ip_address(h.split("%")[0]).is_loopback for h in hosts):
            return "127.0.0.1"
    except ValueError:
        pass
    return "0.0.0.0"


async def _receive(args: argparse.Namespace, addr: NodeAddr) -> int:
    import httpx
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    from ..config import NetworkConfig
    from ..gateway.transfer import TransferError, fetch_manifest, receive, staging_path
    from ..http import P2PTransport
    from ..identity import SecretKey
    from ..node import Node

    key = SecretKey.load(args.key_file) if args.key_file is not None else SecretKey.generate()
    relays = _common.relay_urls_option(args.relay) or ([addr.relay_url] if addr.relay_url else [])
    node = await Node.bind(
        key, host=_bind_host(addr), port=0, config=NetworkConfig.from_env(), **_common.relay_kwargs(relays)
    )
    try:
        transport = P2PTransport(node, addrs=[addr])
        base_url = f"https://{addr.node_id}"
        async with httpx.AsyncClient(transport=transport, base_url=base_url, timeout=args.timeout) as client:
            manifest = await fetch_manifest(client)
            dest = _destination(args.output, manifest.name)
            if not dest.parent.is_dir():
                raise P2PError(f"-o {args.output}: directory {dest.parent} does not exist")
            console = Console(file=sys.stderr, quiet=args.quiet)
            columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
            with Progress("{task.description}", *columns, console=console, transient=False) as bar:
                task = bar.add_task(manifest.name, total=manifest.total)
                for attempt in range(args.retries + 1):
                    bar.reset(task, total=manifest.total)
                    try:
                        await receive(client, dest, manifest, progress=lambda n: bar.advance(task, n))
                        break
                    except OSError as exc:
                        raise P2PError(f"cannot write {dest}: {exc.strerror or exc}") from None
                    except httpx.TransportError as exc:
                        if attempt == args.retries:
                            stage = staging_path(dest, manifest)
                            raise TransferError(
                                f"transfer broken ({describe_error(exc)}); what arrived is kept in {stage}: "
                                "run the same command again to resume"
                            ) from None
                        log.warning("transfer broken (%s); resuming", describe_error(exc))
        what = "file" if manifest.kind == "file" else f"directory of {len(manifest.files)} files"
        print(f"asgi-p2p: received {what} {dest} ({_size(manifest.total)}), sha256 verified", file=sys.stderr)
        print(dest)
        return 0
    except httpx.HTTPError as exc:
        raise P2PError(f"cannot receive from {addr.node_id}: {describe_error(exc)}") from None
    finally:
        await node.close()


def _destination(output: Path | None, name: str) -> Path:
    if output is None:
        return Path.cwd() / name
    return output / name if output.is_dir() else output


def _size(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"

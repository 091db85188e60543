"""HTTP benchmark: asgi-p2p HTTP/3 vs hypercorn HTTP/3 vs uvicorn HTTP/1.1, one table.

    python benchmarks/http.py [--requests 2000] [--concurrency 50] [--big-mib 10]

Every server runs the same raw ASGI app as a subprocess on 127.0.0.1; the
client (httpx) runs in this process.  Server CPU comes from psutil.  Needs the
``bench`` extra (hypercorn, uvicorn).  Rows:

* asgi-p2p with 1200-byte datagrams (safe on any internet path), and asgi-p2p as
  configured by default, which probes the path and grows its datagrams on paths
  that carry larger ones (loopback); the label shows the datagram size the client's
  connection actually used (read from the connection), not an assumed one.  On a
  checkout without path probing the second row configures ``--large-datagram``.
* hypercorn 0.18 ``--quic-bind`` with httpx over an aioquic HTTP/3 transport defined here
* uvicorn (h11) HTTP/1.1 with httpx's own transport
"""

# ruff: noqa: E402
import os
import sys

# this file is named http.py: keep its folder off sys.path or it shadows the stdlib `http`
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _HERE]

import argparse
import asyncio
import contextlib
import datetime
import socket
import ssl
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

APP_SOURCE = """
SMALL = b"hello, world\\n"
CHUNK = b"x" * (1024 * 1024)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"].startswith("/big/"):
        mib = int(scope["path"].rsplit("/", 1)[1])
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/octet-stream"), (b"content-length", str(mib * len(CHUNK)).encode())]})
        for i in range(mib):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": i < mib - 1})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/plain"), (b"content-length", str(len(SMALL)).encode())]})
    await send({"type": "http.response.body", "body": SMALL})
"""


# -- server side (subprocess) -----------------------------------------------------------------


def _p2p_config(max_datagram_size: int, probe: int) -> Any:
    """NetworkConfig for a benchmark row: ``probe`` > 0 probes the path up to that size, 0 turns probing off."""
    import dataclasses

    from asgi_p2p import NetworkConfig

    extra: dict[str, int] = {}
    if any(f.name == "max_probe_datagram_size" for f in dataclasses.fields(NetworkConfig)):
        extra["max_probe_datagram_size"] = probe
    return NetworkConfig.from_env(max_datagram_size=max_datagram_size, keepalive_interval=0, **extra)


def _probing_supported() -> bool:
    import dataclasses

    from asgi_p2p import NetworkConfig

    return any(f.name == "max_probe_datagram_size" for f in dataclasses.fields(NetworkConfig))


def serve_p2p(app_dir: str, max_datagram_size: int, probe: int) -> None:
    sys.path.insert(0, app_dir)
    import signal

    from bench_app import app  # type: ignore[import-not-found]

    from asgi_p2p import Node
    from asgi_p2p.http import H3Server

    async def main() -> None:
        config = _p2p_config(max_datagram_size, probe)
        endpoint = await Node.bind(host="127.0.0.1", config=config)
        server = H3Server(app, endpoint)
        await server.startup()
        host, port = endpoint.local_address
        print(f"READY {endpoint.node_id} {host} {port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.shutdown()
        await endpoint.close()

    asyncio.run(main())


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _self_signed(directory: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(certfile), str(keyfile)


@dataclass
class ServerProc:
    proc: subprocess.Popen[str]
    info: dict[str, Any]

    def cpu(self) -> float:
        import psutil  # type: ignore[import-untyped]

        p = psutil.Process(self.proc.pid)
        total = sum(p.cpu_times()[:2])
        for child in p.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += sum(child.cpu_times()[:2])
        return float(total)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _wait_tcp(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not open port {port}")


def start_p2p(app_dir: str, mds: int, probe: int) -> ServerProc:
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--serve-p2p",
            app_dir,
            "--max-datagram-size",
            str(mds),
            "--probe-datagram-size",
            str(probe),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if not line or line[0] != "READY":
        proc.kill()
        raise RuntimeError("asgi-p2p server did not start")
    return ServerProc(proc, {"node_id": line[1], "addr": (line[2], int(line[3])), "mds": mds})


def start_hypercorn(app_dir: str) -> ServerProc:
    certfile, keyfile = _self_signed(Path(app_dir))
    tcp, udp = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hypercorn",
            "bench_app:app",
            "--bind",
            f"127.0.0.1:{tcp}",
            "--quic-bind",
            f"127.0.0.1:{udp}",
            "--certfile",
            certfile,
            "--keyfile",
            keyfile,
            "--log-level",
            "warning",
        ],
        cwd=app_dir,
        text=True,
    )
    _wait_tcp(tcp)
    time.sleep(0.3)
    return ServerProc(proc, {"port": udp})


def start_uvicorn(app_dir: str) -> ServerProc:
    port = _free_port(socket.SOCK_STREAM)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--http",
            "h11",
        ],
        cwd=app_dir,
        text=True,
    )
    _wait_tcp(port)
    return ServerProc(proc, {"port": port})


# -- an httpx transport over plain aioquic HTTP/3 (for hypercorn) -----------------------------------

import httpx
from aioquic.asyncio.client import connect as quic_connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamReset


class _H3Client(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.pending: dict[int, tuple[asyncio.Future[None], dict[str, Any]]] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamReset) and event.stream_id in self.pending:
            fut, _ = self.pending.pop(event.stream_id)
            fut.set_exception(httpx.RemoteProtocolError("stream reset"))
        for ev in self.h3.handle_event(event):
            if not isinstance(ev, HeadersReceived | DataReceived) or ev.stream_id not in self.pending:
                continue
            fut, resp = self.pending[ev.stream_id]
            if isinstance(ev, HeadersReceived):
                if "status" not in resp:
                    resp["status"] = int(dict(ev.headers)[b":status"])
                    resp["headers"] = [(k, v) for k, v in ev.headers if not k.startswith(b":")]
            else:
                resp["body"].append(ev.data)
            if ev.stream_ended:
                del self.pending[ev.stream_id]
                fut.set_result(None)


class AioquicH3Transport(httpx.AsyncBaseTransport):
    """Minimal httpx transport over aioquic HTTP/3 (one connection, whole bodies)."""

    def __init__(self, host: str, port: int, max_datagram_size: int = 1200) -> None:
        self._host, self._port, self._mds = host, port, max_datagram_size
        self._stack = contextlib.AsyncExitStack()
        self._proto: _H3Client | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> _H3Client:
        async with self._lock:
            if self._proto is None:
                config = QuicConfiguration(
                    is_client=True,
                    alpn_protocols=H3_ALPN,
                    verify_mode=ssl.CERT_NONE,
                    max_datagram_size=self._mds,
                    server_name="localhost",
                )
                proto = await self._stack.enter_async_context(
                    quic_connect(self._host, self._port, configuration=config, create_protocol=_H3Client)
                )
                assert isinstance(proto, _H3Client)
                self._proto = proto
            return self._proto

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        proto = await self._connection()
        body = await request.aread()
        sid = proto._quic.get_next_available_stream_id()
        headers = [
            (b":method", request.method.encode()),
            (b":scheme", b"https"),
            (b":authority", request.url.netloc),
            (b":path", request.url.raw_path),
        ]
        headers += [
            (k.lower(), v)
            for k, v in request.headers.raw
            if k.lower() not in (b"host", b"connection", b"keep-alive", b"transfer-encoding")
        ]
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        resp: dict[str, Any] = {"body": []}
        proto.pending[sid] = (fut, resp)
        proto.h3.send_headers(sid, headers, end_stream=not body)
        if body:
            proto.h3.send_data(sid, body, end_stream=True)
        proto.transmit()
        await fut
        return httpx.Response(
            resp["status"],
            headers=resp["headers"],
            stream=httpx.ByteStream(b"".join(resp["body"])),
            extensions={"http_version": b"HTTP/3"},
        )

    async def aclose(self) -> None:
        await self._stack.aclose()


# -- measuring ---------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    seq_rps: float
    seq_p50: float
    seq_p99: float
    seq_cpu: float
    conc_rps: float
    conc_p50: float
    conc_p99: float
    conc_cpu: float
    big_mbps: float
    big_cpu: float


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def measure(
    name: str,
    server: ServerProc,
    client: httpx.AsyncClient,
    base: str,
    n: int,
    conc: int,
    big_mib: int,
    on_phase: Callable[[], None] = lambda: None,
) -> Row:
    small = f"{base}/small"
    for _ in range(50):  # warm up (connection, code paths)
        assert (await client.get(small)).status_code == 200
    on_phase()

    lat: list[float] = []
    cpu0, t0 = server.cpu(), time.perf_counter()
    for _ in range(n):
        s = time.perf_counter()
        r = await client.get(small)
        lat.append(time.perf_counter() - s)
        assert r.status_code == 200
    seq_wall, seq_cpu = time.perf_counter() - t0, server.cpu() - cpu0
    seq = (n / seq_wall, _pct(lat, 0.5) * 1e3, _pct(lat, 0.99) * 1e3, seq_cpu / n * 1e3)
    on_phase()

    clat: list[float] = []
    per_worker = n // conc

    async def worker() -> None:
        for _ in range(per_worker):
            s = time.perf_counter()
            r = await client.get(small)
            clat.append(time.perf_counter() - s)
            assert r.status_code == 200

    cpu0, t0 = server.cpu(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    conc_wall, conc_cpu = time.perf_counter() - t0, server.cpu() - cpu0
    done = per_worker * conc
    cc = (done / conc_wall, _pct(clat, 0.5) * 1e3, _pct(clat, 0.99) * 1e3, conc_cpu / done * 1e3)
    on_phase()

    rates: list[float] = []
    cpus: list[float] = []
    for _ in range(3):
        cpu0, t0 = server.cpu(), time.perf_counter()
        got = 0
        async with client.stream("GET", f"{base}/big/{big_mib}") as r:
            async for chunk in r.aiter_raw():
                got += len(chunk)
        wall = time.perf_counter() - t0
        assert got == big_mib * 1024 * 1024, got
        rates.append(got / wall / 1e6)
        cpus.append(server.cpu() - cpu0)
        on_phase()
    return Row(name, *seq, *cc, statistics.median(rates), statistics.median(cpus) * 1e3)


async def bench_p2p(app_dir: str, mds: int, probe: int, args: argparse.Namespace) -> Row:
    from asgi_p2p import Node, NodeAddr, NodeId
    from asgi_p2p.http import P2PTransport

    server = start_p2p(app_dir, mds, probe)
    try:
        endpoint = await Node.bind(host="127.0.0.1", config=_p2p_config(mds, probe))
        node_id = NodeId.parse(server.info["node_id"])
        transport = P2PTransport(endpoint, addrs=[NodeAddr(node_id, [server.info["addr"]])])
        seen: set[int] = set()

        def datagram_size() -> None:
            # the size the connection builds now (PeerConnection.datagram_size where it exists)
            for conn in endpoint.connections:
                if conn.remote_node_id == node_id:
                    seen.add(int(getattr(conn, "datagram_size", mds)))

        async with httpx.AsyncClient(transport=transport, timeout=60) as client:
            row = await measure(
                "asgi-p2p h3",
                server,
                client,
                f"https://{node_id}",
                args.requests,
                args.concurrency,
                args.big_mib,
                on_phase=datagram_size,
            )
        await endpoint.close()
        sizes = "/".join(str(n) for n in sorted(seen)) or str(mds)
        row.name = f"asgi-p2p h3 (datagram {sizes}{', probed' if probe > mds else ''})"
        return row
    finally:
        server.stop()


async def bench_hypercorn(app_dir: str, args: argparse.Namespace) -> Row:
    server = start_hypercorn(app_dir)
    try:
        transport = AioquicH3Transport("127.0.0.1", server.info["port"])
        async with httpx.AsyncClient(transport=transport, timeout=60) as client:
            return await measure(
                "hypercorn h3 (datagram 1200)",
                server,
                client,
                "https://localhost",
                args.requests,
                args.concurrency,
                args.big_mib,
            )
    finally:
        server.stop()


async def bench_uvicorn(app_dir: str, args: argparse.Namespace) -> Row:
    server = start_uvicorn(app_dir)
    try:
        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            return await measure(
                "uvicorn h11 HTTP/1.1",
                server,
                client,
                f"http://127.0.0.1:{server.info['port']}",
                args.requests,
                args.concurrency,
                args.big_mib,
            )
    finally:
        server.stop()


def table(rows: list[Row], args: argparse.Namespace) -> str:
    mib, conc = args.big_mib, args.concurrency
    head = (
        f"| server | seq req/s | seq p50 / p99 ms | seq server CPU ms/req | {conc}-conc req/s "
        f"| conc p50 / p99 ms | conc server CPU ms/req | {mib} MiB GET MB/s | {mib} MiB server CPU ms |"
    )
    lines = [head, "|" + " --- |" * 9]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.seq_rps:,.0f} | {r.seq_p50:.2f} / {r.seq_p99:.2f} | {r.seq_cpu:.2f} "
            f"| {r.conc_rps:,.0f} | {r.conc_p50:.1f} / {r.conc_p99:.1f} | {r.conc_cpu:.2f} "
            f"| {r.big_mbps:.1f} | {r.big_cpu:.0f} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as app_dir:
        await asyncio.to_thread(Path(app_dir, "bench_app.py").write_text, APP_SOURCE)
        if _probing_supported():
            large = ("asgi-p2p probed", lambda: bench_p2p(app_dir, 1200, args.large_datagram, args))
        else:
            large = (f"asgi-p2p {args.large_datagram}", lambda: bench_p2p(app_dir, args.large_datagram, 0, args))
        steps: list[tuple[str, Callable[[], Awaitable[Row]]]] = [
            ("asgi-p2p 1200", lambda: bench_p2p(app_dir, 1200, 0, args)),
            large,
        ]
        if not args.only_p2p:
            steps += [
                ("hypercorn", lambda: bench_hypercorn(app_dir, args)),
                ("uvicorn", lambda: bench_uvicorn(app_dir, args)),
            ]
        rows: list[Row] = []
        for label, step in steps:
            print(f"running {label} ...", file=sys.stderr, flush=True)
            try:
                rows.append(await step())
            except Exception as exc:  # a missing optional server must not hide the others
                print(f"  {label} failed: {exc!r}", file=sys.stderr)
    print(table(rows, args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--big-mib", type=int, default=10)
    parser.add_argument(
        "--large-datagram",
        type=int,
        default=16384,
        help="datagram size the second asgi-p2p row probes up to (or configures, without path probing)",
    )
    parser.add_argument("--only-p2p", action="store_true")
    parser.add_argument("--serve-p2p", metavar="APP_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--max-datagram-size", type=int, default=1200, help=argparse.SUPPRESS)
    parser.add_argument("--probe-datagram-size", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_p2p:
        serve_p2p(args.serve_p2p, args.max_datagram_size, args.probe_datagram_size)
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()

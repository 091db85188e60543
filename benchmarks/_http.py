"""HTTP benchmark: asgi-p2p HTTP/3 vs hypercorn HTTP/3 vs uvicorn HTTP/1.1 (run ``benchmarks/http.py``).

    python benchmarks/http.py [--repeat 3] [--requests 2000] [--concurrency 50] [--big-mib 10]

Every server runs the same raw ASGI app as a subprocess on 127.0.0.1; the
client (httpx) runs in this process.  Server CPU comes from psutil (the server
process and its children), client CPU from this process's ``time.process_time``.
Needs the ``bench`` extra (hypercorn, uvicorn).  Rows:

* ``asgi-p2p, aioquic client``: the asgi-p2p ``H3Server`` driven by the *same client
  code* as hypercorn (httpx over the plain aioquic HTTP/3 transport defined here, which
  presents an Ed25519 node certificate, since asgi-p2p nodes authenticate both ends),
  1200-byte datagrams on both sides, path probing off: with the hypercorn row, the
  headline comparison (same client, same datagram size, only the server differs);
* ``hypercorn h3, aioquic client``: hypercorn 0.18 ``--quic-bind``, 1200-byte datagrams;
* ``asgi-p2p, asgi-p2p client``: both ends asgi-p2p (``P2PTransport``), 1200-byte
  datagrams, probing off: what an asgi-p2p user gets end to end at that size;
* ``asgi-p2p, asgi-p2p client, probed``: as configured by default, probing the path and
  growing datagrams where it carries larger ones (loopback); the label shows the sizes the
  client's connection actually used (read from the connection after every phase);
* ``uvicorn h11 HTTP/1.1, httpx``: httpx's own transport over TCP.

The aioquic client of the first two rows is aioquic as shipped: importing ``asgi_p2p``
changes aioquic for the whole process, so those rows' client runs in a process of its own
that never imports it (``http.py --aioquic-client``: the certificate handed over as PEM
files, the row back as JSON), which checks at the end that aioquic was unpatched and says so
on stderr; hypercorn's server process never imports asgi_p2p either.

Runs are interleaved: ``--repeat N`` runs every row once per round (the row order rotates
from round to round); the tables show medians and every run's values, and ratios are taken
per round (same round), then their median.
"""

# ruff: noqa: E402
import os
import sys

# benchmarks/http.py (the launcher) would shadow the stdlib `http`: keep this folder off sys.path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _HERE]

import argparse
import asyncio
import contextlib
import datetime
import importlib.util
import json
import socket
import ssl
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any


def _local(name: str) -> ModuleType:
    """benchmarks/<name>.py, loaded by path (this folder is kept off sys.path)."""
    if f"_bench{name}" in sys.modules:
        return sys.modules[f"_bench{name}"]
    spec = importlib.util.spec_from_file_location(f"_bench{name}", Path(_HERE) / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


#: bare aioquic's helpers (aioquic, cryptography and the standard library only)
_bare = _local("_bare")

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


def serve_p2p(app_dir: str, max_datagram_size: int, probe: int, metrics: bool = False) -> None:
    sys.path.insert(0, app_dir)
    import inspect
    import signal

    from bench_app import app  # type: ignore[import-not-found]

    from asgi_p2p import Node
    from asgi_p2p.http import H3Server

    async def main() -> None:
        config = _p2p_config(max_datagram_size, probe)
        endpoint = await Node.bind(host="127.0.0.1", config=config)
        # a benchmark is one peer sending as fast as it can: the per-peer rate limit (where it
        # exists) would answer 429, so it is off in every row
        limits = {"limit_peer_rate": 0} if "limit_peer_rate" in inspect.signature(H3Server).parameters else {}
        server = H3Server(app, endpoint, **limits)
        listener = None
        if metrics:
            from asgi_p2p.ops import start_metrics_server

            listener = await start_metrics_server("127.0.0.1:0", endpoint=endpoint, http=server)
        await server.startup()
        host, port = endpoint.local_address
        mport = listener.address[1] if listener is not None else 0
        print(f"READY {endpoint.node_id} {host} {port} {mport}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.shutdown()
        if listener is not None:
            await listener.close()
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
class TreeCpu:
    """The CPU seconds of process ``pid`` and its children."""

    pid: int

    def cpu(self) -> float:
        import psutil  # type: ignore[import-untyped]

        p = psutil.Process(self.pid)
        total = sum(p.cpu_times()[:2])
        for child in p.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += sum(child.cpu_times()[:2])
        return float(total)


@dataclass
class ServerProc:
    proc: subprocess.Popen[str]
    info: dict[str, Any]

    def cpu(self) -> float:
        return TreeCpu(self.proc.pid).cpu()

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


def start_p2p(app_dir: str, mds: int, probe: int, metrics: bool = False) -> ServerProc:
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
            *(["--serve-metrics"] if metrics else []),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if not line or line[0] != "READY":
        proc.kill()
        raise RuntimeError("asgi-p2p server did not start")
    info = {"node_id": line[1], "addr": (line[2], int(line[3])), "mds": mds, "metrics_port": int(line[4])}
    return ServerProc(proc, info)


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

    def __init__(
        self,
        host: str,
        port: int,
        max_datagram_size: int = 1200,
        *,
        server_name: str = "localhost",
        credentials: Any = None,
    ) -> None:
        self._host, self._port, self._mds = host, port, max_datagram_size
        self._server_name, self._credentials = server_name, credentials  # a _bare.Credentials or None
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
                    server_name=self._server_name,
                )
                if self._credentials is not None:
                    config.load_cert_chain(self._credentials.certificate, self._credentials.private_key)
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
    seq_cpu: float  # server CPU ms per request
    seq_client_cpu: float  # client CPU ms per request
    conc_rps: float
    conc_p50: float
    conc_p99: float
    conc_cpu: float
    conc_client_cpu: float
    big_mbps: float
    big_cpu: float  # server CPU ms per transfer
    big_client_cpu: float


#: (attribute, column heading, digits) of the tables
COLUMNS: list[tuple[str, str, int]] = [
    ("seq_rps", "seq req/s", 0),
    ("seq_p50", "seq p50 ms", 2),
    ("seq_p99", "seq p99 ms", 2),
    ("seq_cpu", "seq server CPU ms/req", 3),
    ("seq_client_cpu", "seq client CPU ms/req", 3),
    ("conc_rps", "{conc}-conc req/s", 0),
    ("conc_p50", "conc p50 ms", 1),
    ("conc_p99", "conc p99 ms", 1),
    ("conc_cpu", "conc server CPU ms/req", 3),
    ("conc_client_cpu", "conc client CPU ms/req", 3),
    ("big_mbps", "{mib} MiB GET MB/s", 1),
    ("big_cpu", "{mib} MiB server CPU ms", 0),
    ("big_client_cpu", "{mib} MiB client CPU ms", 0),
]


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def measure(
    name: str,
    server: ServerProc | TreeCpu,
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
    cpu = time.process_time

    lat: list[float] = []
    cpu0, c0, t0 = server.cpu(), cpu(), time.perf_counter()
    for _ in range(n):
        s = time.perf_counter()
        r = await client.get(small)
        lat.append(time.perf_counter() - s)
        assert r.status_code == 200
    seq_wall, seq_cpu, seq_client = time.perf_counter() - t0, server.cpu() - cpu0, cpu() - c0
    seq = (n / seq_wall, _pct(lat, 0.5) * 1e3, _pct(lat, 0.99) * 1e3, seq_cpu / n * 1e3, seq_client / n * 1e3)
    on_phase()

    clat: list[float] = []
    per_worker = n // conc

    async def worker() -> None:
        for _ in range(per_worker):
            s = time.perf_counter()
            r = await client.get(small)
            clat.append(time.perf_counter() - s)
            assert r.status_code == 200

    cpu0, c0, t0 = server.cpu(), cpu(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    conc_wall, conc_cpu, conc_client = time.perf_counter() - t0, server.cpu() - cpu0, cpu() - c0
    done = per_worker * conc
    cc = (
        done / conc_wall,
        _pct(clat, 0.5) * 1e3,
        _pct(clat, 0.99) * 1e3,
        conc_cpu / done * 1e3,
        conc_client / done * 1e3,
    )
    on_phase()

    rates: list[float] = []
    cpus: list[float] = []
    client_cpus: list[float] = []
    for _ in range(3):
        cpu0, c0, t0 = server.cpu(), cpu(), time.perf_counter()
        got = 0
        async with client.stream("GET", f"{base}/big/{big_mib}") as r:
            async for chunk in r.aiter_raw():
                got += len(chunk)
        wall = time.perf_counter() - t0
        assert got == big_mib * 1024 * 1024, got
        rates.append(got / wall / 1e6)
        cpus.append(server.cpu() - cpu0)
        client_cpus.append(cpu() - c0)
        on_phase()
    return Row(
        name,
        *seq,
        *cc,
        statistics.median(rates),
        statistics.median(cpus) * 1e3,
        statistics.median(client_cpus) * 1e3,
    )


def _node_credentials(seed: str, directory: str) -> Any:
    """An Ed25519 node certificate and key (what the asgi-p2p server requires of any client), as PEM files."""
    from asgi_p2p import SecretKey
    from asgi_p2p.endpoint.tls import node_certificate

    key = SecretKey.from_seed(seed)
    return _bare.write_credentials(node_certificate(key), key.private_key, directory, seed)


async def aioquic_client_row(
    name: str, server: ServerProc, addr: tuple[str, int], base: str, args: argparse.Namespace, **transport: Any
) -> Row:
    """:func:`measure` with the aioquic client, in a process that never imports asgi_p2p (``--aioquic-client``)."""
    if transport.get("credentials") is not None:
        transport["credentials"] = asdict(transport["credentials"])
    job = {
        "name": name,
        "server_pid": server.proc.pid,
        "addr": list(addr),
        "base": base,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "big_mib": args.big_mib,
        "transport": transport,
    }
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, os.path.join(_HERE, "http.py"), "--aioquic-client", json.dumps(job)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    stderr = err.decode()
    if proc.returncode != 0:
        raise RuntimeError(f"the aioquic client failed ({proc.returncode}):\n{stderr[-4000:]}")
    print(f"  {_bare.check_unpatched(stderr, 'the aioquic client')}", file=sys.stderr, flush=True)
    return Row(**json.loads(out))


def _aioquic_client(job_json: str) -> None:
    """``--aioquic-client JOB``: one row's measurement with the aioquic client; the row as JSON on stdout."""
    job = json.loads(job_json)
    options = dict(job["transport"])
    if options.get("credentials") is not None:
        options["credentials"] = _bare.Credentials(**options["credentials"])

    async def run() -> Row:
        transport = AioquicH3Transport(*job["addr"], **options)
        async with httpx.AsyncClient(transport=transport, timeout=60) as client:
            return await measure(
                job["name"],
                TreeCpu(job["server_pid"]),
                client,
                job["base"],
                *(job[k] for k in ("requests", "concurrency", "big_mib")),
            )

    row = asyncio.run(run())
    print(_bare.unpatched(), file=sys.stderr)
    print(json.dumps(asdict(row)))


async def _scrape_every_5s(port: int, scrapes: list[int]) -> None:
    """Scrape the server's /metrics every 5 seconds (Prometheus scrapes every 15 to 60 s by default)."""
    async with httpx.AsyncClient() as http:
        while True:
            r = await http.get(f"http://127.0.0.1:{port}/metrics")
            assert r.status_code == 200 and "asgi_p2p_http_requests_total" in r.text
            scrapes.append(len(r.content))
            await asyncio.sleep(5.0)


async def bench_p2p(
    app_dir: str, mds: int, probe: int, args: argparse.Namespace, *, aioquic_client: bool, metrics: bool = False
) -> Row:
    from asgi_p2p import Node, NodeAddr, NodeId
    from asgi_p2p.http import P2PTransport

    server = start_p2p(app_dir, mds, probe, metrics)
    scrapes: list[int] = []
    scraper = asyncio.ensure_future(_scrape_every_5s(server.info["metrics_port"], scrapes)) if metrics else None
    try:
        node_id = NodeId.parse(server.info["node_id"])
        if aioquic_client:
            return await aioquic_client_row(
                f"asgi-p2p h3, aioquic client (datagram {mds})",
                server,
                server.info["addr"],
                f"https://{node_id}",
                args,
                max_datagram_size=mds,
                server_name=str(node_id),
                credentials=_node_credentials("http-bench-client", app_dir),
            )
        endpoint = await Node.bind(host="127.0.0.1", config=_p2p_config(mds, probe))
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
        if probe <= mds and seen - {mds}:
            raise RuntimeError(f"asgi-p2p used datagram sizes {sorted(seen)} with probing off, not {mds}")
        row.name = f"asgi-p2p h3, asgi-p2p client (datagram {sizes}{', probed' if probe > mds else ''})"
        if metrics:
            if not scrapes:
                raise RuntimeError("the metrics listener was never scraped")
            row.name += f", metrics on ({len(scrapes)} scrapes)"
        return row
    finally:
        if scraper is not None:
            scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scraper
        server.stop()


async def bench_hypercorn(app_dir: str, args: argparse.Namespace) -> Row:
    server = start_hypercorn(app_dir)
    try:
        return await aioquic_client_row(
            "hypercorn h3, aioquic client (datagram 1200)",
            server,
            ("127.0.0.1", server.info["port"]),
            "https://localhost",
            args,
            max_datagram_size=1200,
        )
    finally:
        server.stop()


async def bench_uvicorn(app_dir: str, args: argparse.Namespace) -> Row:
    server = start_uvicorn(app_dir)
    try:
        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            return await measure(
                "uvicorn h11 HTTP/1.1, httpx",
                server,
                client,
                f"http://127.0.0.1:{server.info['port']}",
                args.requests,
                args.concurrency,
                args.big_mib,
            )
    finally:
        server.stop()


def _heads(args: argparse.Namespace) -> list[str]:
    return [head.format(conc=args.concurrency, mib=args.big_mib) for _, head, _ in COLUMNS]


def _fmt(v: float, digits: int) -> str:
    return "n/a" if v != v else f"{v:,.{digits}f}"


def median_table(runs: dict[str, list[Row]], args: argparse.Namespace) -> str:
    """One line per row: the median of each column across the runs."""
    lines = ["| row | " + " | ".join(_heads(args)) + " |", "|" + " --- |" * (len(COLUMNS) + 1)]
    for label, rows in runs.items():
        cells = [_fmt(statistics.median(getattr(r, attr) for r in rows), digits) for attr, _, digits in COLUMNS]
        lines.append(f"| {rows[-1].name if rows else label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def runs_table(runs: dict[str, list[Row]], args: argparse.Namespace) -> str:
    """Every run's value of every column (rows x columns, the runs in round order)."""
    lines = ["| row | " + " | ".join(_heads(args)) + " |", "|" + " --- |" * (len(COLUMNS) + 1)]
    for label, rows in runs.items():
        cells = [", ".join(_fmt(getattr(r, attr), digits) for r in rows) for attr, _, digits in COLUMNS]
        lines.append(f"| {rows[-1].name if rows else label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: (column, what it means, True when lower is better) of the headline ratios
RATIOS = [
    ("seq_cpu", "server CPU per sequential request", True),
    ("conc_cpu", "server CPU per request, {conc} concurrent", True),
    ("seq_rps", "sequential requests/s", False),
    ("conc_rps", "requests/s, {conc} concurrent", False),
    ("big_mbps", "{mib} MiB GET throughput", False),
    ("big_cpu", "server CPU per {mib} MiB GET", True),
]


def ratio_lines(runs: dict[str, list[Row]], args: argparse.Namespace, num: str, den: str) -> list[str]:
    """Per-round ratios ``num`` / ``den`` (same round), their median and range."""
    a, b = runs.get(num, []), runs.get(den, [])
    if not a or not b or len(a) != len(b):
        return []
    out = []
    for attr, what, _ in RATIOS:
        per = [getattr(x, attr) / getattr(y, attr) for x, y in zip(a, b, strict=True) if getattr(y, attr)]
        if not per:
            continue
        label = what.format(conc=args.concurrency, mib=args.big_mib)
        runs_text = ", ".join(f"{v:.2f}" for v in per)
        out.append(f"- {label}: {statistics.median(per):.2f}x (per run: {runs_text})")
    return out


def machine_description() -> str:
    """benchmarks/_machine.py's line (loaded by path: this folder is kept off sys.path)."""
    return str(_local("_machine").machine_description())


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as app_dir:
        await asyncio.to_thread(Path(app_dir, "bench_app.py").write_text, APP_SOURCE)
        steps: list[tuple[str, Callable[[], Awaitable[Row]]]] = [
            ("p2p-aioquic", lambda: bench_p2p(app_dir, 1200, 0, args, aioquic_client=True)),
            ("hypercorn", lambda: bench_hypercorn(app_dir, args)),
            ("p2p-p2p", lambda: bench_p2p(app_dir, 1200, 0, args, aioquic_client=False)),
            ("p2p-probed", lambda: bench_p2p(app_dir, 1200, args.large_datagram, args, aioquic_client=False)),
            ("uvicorn", lambda: bench_uvicorn(app_dir, args)),
        ]
        if args.only_p2p:
            steps = [s for s in steps if s[0].startswith("p2p")]
        if args.metrics_overhead:
            steps = [
                ("p2p-p2p", lambda: bench_p2p(app_dir, 1200, 0, args, aioquic_client=False)),
                ("p2p-metrics", lambda: bench_p2p(app_dir, 1200, 0, args, aioquic_client=False, metrics=True)),
            ]
        runs: dict[str, list[Row]] = {label: [] for label, _ in steps}
        for rnd in range(args.repeat):
            shift = rnd % len(steps)
            for label, step in steps[shift:] + steps[:shift]:
                print(f"round {rnd + 1}/{args.repeat}: {label} ...", file=sys.stderr, flush=True)
                try:
                    runs[label].append(await step())
                except Exception as exc:  # a missing optional server must not hide the others
                    print(f"  {label} failed: {exc!r}", file=sys.stderr)
    runs = {k: v for k, v in runs.items() if v}
    print(
        f"Runs: {args.repeat}, interleaved (every row once per round, the order rotating); "
        f"{args.requests} sequential and {args.concurrency}-concurrent small GETs, three {args.big_mib} MiB GETs "
        "(their median) per run\n"
    )
    print("Medians:\n")
    print(median_table(runs, args))
    print("\nEvery run (in round order):\n")
    print(runs_table(runs, args))
    headline = ratio_lines(runs, args, "p2p-aioquic", "hypercorn")
    if headline:
        print("\nasgi-p2p / hypercorn, same aioquic client, both 1200-byte datagrams (ratio per round, median):\n")
        print("\n".join(headline))
    overhead = ratio_lines(runs, args, "p2p-metrics", "p2p-p2p")
    if overhead:
        print("\nasgi-p2p with metrics on (scraped every 5 s) / metrics off, same client (ratio per round, median):\n")
        print("\n".join(overhead))
    own = ratio_lines(runs, args, "p2p-p2p", "hypercorn")
    if own:
        print("\nasgi-p2p with its own client / hypercorn with the aioquic client, both 1200-byte datagrams:\n")
        print("\n".join(own))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--big-mib", type=int, default=10)
    parser.add_argument(
        "--large-datagram",
        type=int,
        default=16384,
        help="datagram size the probed asgi-p2p row probes up to",
    )
    parser.add_argument("--only-p2p", action="store_true", help="leave hypercorn and uvicorn out")
    parser.add_argument(
        "--metrics-overhead",
        action="store_true",
        help="only two rows: asgi-p2p with its own client, metrics off and on (scraped every 5 s)",
    )
    parser.add_argument("--serve-p2p", metavar="APP_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--serve-metrics", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--max-datagram-size", type=int, default=1200, help=argparse.SUPPRESS)
    parser.add_argument("--probe-datagram-size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--aioquic-client", metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.aioquic_client:
        _aioquic_client(args.aioquic_client)
        return
    if args.serve_p2p:
        serve_p2p(args.serve_p2p, args.max_datagram_size, args.probe_datagram_size, args.serve_metrics)
        return
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    print(f"Machine: {machine_description()}", flush=True)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()

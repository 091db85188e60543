"""Handshake cost (issue 11, part 4): asgi-p2p vs bare aioquic, both ends in one process.

N handshakes in a loop on real UDP over 127.0.0.1, client and server on one event
loop, so one CPU clock covers both ends.  Each implementation does the same work
per handshake: mutual Ed25519 TLS (the same ``node_certificate`` certificates,
the server requests the client's), wait until the client holds HANDSHAKE_DONE
(when asgi-p2p's ``connect`` returns), then close and wait until the close is
done, so that every handshake meets a peer the paths layer does not know yet (as
``transport.py`` does).  ``--overlap`` closes in the background instead: the next
connection then finds the peer's paths alive from the previous one.

Prints wall ms (to HANDSHAKE_DONE) and CPU ms (both ends, close included) per
handshake for interleaved runs; ``--profile`` adds the top cProfile entries of the
asgi-p2p runs (``--profile-bare``: of bare aioquic's); ``--instructions`` counts
instructions per handshake under valgrind (``cachegrind``), which a loaded machine
does not disturb: it runs this script under valgrind with two batch sizes per
implementation and divides the difference.

Bare aioquic is aioquic as shipped: importing ``asgi_p2p`` changes aioquic for the whole
process, so each bare aioquic round runs in a fresh process that never imports it (this
script with ``--bare-round``: both ends on its one loop, the certificates handed over as PEM
files, its numbers back as JSON), which checks at the end that aioquic was unpatched and says
so (``# bare aioquic unpatched: ...`` on stderr).  The rounds stay interleaved.

Usage::

    .venv/bin/python benchmarks/handshake.py --handshakes 200 --repeat 5
    .venv/bin/python benchmarks/handshake.py --handshakes 300 --repeat 1 --profile
    .venv/bin/python benchmarks/handshake.py --instructions      # needs valgrind, ~4 min
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

# asgi_p2p is imported where the asgi-p2p side needs it, never at the top: the bare aioquic
# rounds run this script in processes that must not import it (it patches aioquic on import)
from benchmarks._bare import (
    Credentials,
    bare_config,
    check_unpatched,
    request_client_certificate,
    unpatched,
    write_credentials,
)
from benchmarks._machine import machine_description

HOST = "127.0.0.1"


class _BareServer(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request_client_certificate(self)


class _BareClient(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.confirmed: asyncio.Future[None] = self._loop.create_future()

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        if not self.confirmed.done() and self._quic._handshake_confirmed:
            self.confirmed.set_result(None)


class _Harness:
    """One implementation's server and client, set up once; :meth:`batch` runs handshakes."""

    def __init__(self, overlap: bool) -> None:
        self._overlap = overlap
        self._closing: set[asyncio.Task[Any]] = set()

    async def setup(self, mds: int) -> None:
        raise NotImplementedError

    async def once(self) -> float:
        """One handshake, timed until the client holds HANDSHAKE_DONE, then its close."""
        raise NotImplementedError

    async def teardown(self) -> None:
        raise NotImplementedError

    async def _close(self, close: Any) -> None:
        if not self._overlap:
            await close
            return
        task = asyncio.ensure_future(close)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        await asyncio.sleep(0)  # the close starts now (a closing connection is not reused)

    async def batch(self, n: int) -> tuple[list[float], float]:
        """``n`` handshakes: their wall seconds, and the CPU seconds of the batch (both ends, closes included)."""
        cpu0 = time.process_time()
        walls = [await self.once() for _ in range(n)]
        if self._closing:  # the closes (CONNECTION_CLOSE, the draining period) end inside the batch
            await asyncio.wait(list(self._closing), timeout=10)
        await asyncio.sleep(0.01)  # the server handles the last packets
        return walls, time.process_time() - cpu0


class BareHarness(_Harness):
    """Bare aioquic: only ever run in a ``--bare-round`` process (see :func:`bare_round`)."""

    def __init__(self, overlap: bool, server: Credentials, client: Credentials) -> None:
        super().__init__(overlap)
        self._credentials = (server, client)

    async def setup(self, mds: int) -> None:
        server, client = self._credentials
        self._server = await serve(
            HOST,
            0,
            configuration=bare_config(False, server, mds),
            create_protocol=_BareServer,
        )
        self._port = self._server._transport.get_extra_info("socket").getsockname()[1]
        self._config = bare_config(True, client, mds)

    async def once(self) -> float:
        t0 = time.perf_counter()
        cm = connect(HOST, self._port, configuration=self._config, create_protocol=_BareClient)
        proto = await cm.__aenter__()
        assert isinstance(proto, _BareClient)
        await proto.confirmed
        wall = time.perf_counter() - t0
        await self._close(cm.__aexit__(None, None, None))
        return wall

    async def teardown(self) -> None:
        self._server.close()


class P2PHarness(_Harness):
    async def setup(self, mds: int) -> None:
        from asgi_p2p import NetworkConfig, Node, NodeAddr, SecretKey

        config = NetworkConfig.from_env(max_datagram_size=mds, max_probe_datagram_size=0)
        self._server = await Node.bind(SecretKey.from_seed("hs-server"), host=HOST, config=config)
        self._client = await Node.bind(SecretKey.from_seed("hs-client"), host=HOST, config=config)
        self._addr = NodeAddr(self._server.node_id, [self._server.local_address])
        listener = self._server.listen()

        async def drain() -> None:
            while True:
                await listener.accept()  # the client closes it

        self._acceptor = asyncio.create_task(drain())

    async def once(self) -> float:
        # a full handshake every time, as bare aioquic's (a kept session ticket would resume)
        self._client.forget_session_tickets()
        t0 = time.perf_counter()
        mc = await self._client.connect(self._addr)  # returns once HANDSHAKE_DONE arrived
        wall = time.perf_counter() - t0
        await self._close(mc.close())
        return wall

    async def teardown(self) -> None:
        self._acceptor.cancel()
        await self._client.close()
        await self._server.close()


IMPLS = ("asgi-p2p", "aioquic")


def write_bare_credentials(directory: str) -> dict[str, dict[str, str]]:
    """The node certificates of the two ends, as PEM files for a ``--bare-round`` process."""
    from asgi_p2p import SecretKey
    from asgi_p2p.endpoint.tls import node_certificate

    out = {}
    for end in ("server", "client"):
        key = SecretKey.from_seed(f"hs-{end}")
        out[end] = asdict(write_credentials(node_certificate(key), key.private_key, directory, f"hs-{end}"))
    return out


def bare_round_command(job: dict[str, Any]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--bare-round", json.dumps(job)]


async def run_bare_round(job: dict[str, Any]) -> tuple[list[float], float]:
    """One bare aioquic round in a fresh process that never imports asgi_p2p: its walls and CPU seconds."""
    proc = await asyncio.create_subprocess_exec(
        *bare_round_command(job), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    stderr = err.decode()
    if proc.returncode != 0:
        raise RuntimeError(f"the bare aioquic round failed ({proc.returncode}):\n{stderr[-4000:]}")
    print(f"# {check_unpatched(stderr, 'the bare aioquic round')}", file=sys.stderr)
    result = json.loads(out)
    return [float(w) for w in result["walls"]], float(result["cpu"])


def bare_round(job_json: str) -> int:
    """``--bare-round JOB``: bare aioquic's warm-up and one batch on one loop; the numbers as JSON on stdout."""
    job = json.loads(job_json)
    if job.get("initial_rtt") is not None:
        _set_initial_rtt(job["initial_rtt"])
    creds = job["credentials"]
    harness = BareHarness(job["overlap"], Credentials(**creds["server"]), Credentials(**creds["client"]))
    prof = cProfile.Profile() if job.get("profile") else None

    async def run() -> tuple[list[float], float]:
        await harness.setup(job["mds"])
        try:
            await harness.batch(3)  # warm-up (imports, caches, first connection)
            if prof is not None:
                prof.enable()
            try:
                return await harness.batch(job["handshakes"])
            finally:
                if prof is not None:
                    prof.disable()
        finally:
            await harness.teardown()

    walls, cpu = asyncio.run(run())
    if prof is not None:
        prof.dump_stats(job["profile"])
    print(unpatched(), file=sys.stderr)
    print(json.dumps({"walls": walls, "cpu": cpu}))
    return 0


def _set_initial_rtt(seconds: float) -> None:
    """Every QUIC connection (both implementations) starts from this RTT estimate.

    For runs under valgrind, which slows everything ~40x: with aioquic's 100 ms default,
    probe timeouts would fire during handshakes and add retransmissions that a normal run
    never has.
    """
    original = QuicConnection.__init__

    def __init__(self: QuicConnection, *args: Any, configuration: QuicConfiguration, **kwargs: Any) -> None:
        configuration.initial_rtt = seconds
        original(self, *args, configuration=configuration, **kwargs)

    QuicConnection.__init__ = __init__  # type: ignore[method-assign]


async def measure(
    n: int,
    rounds: int,
    mds: int,
    profiles: dict[str, cProfile.Profile | None],
    impls: tuple[str, ...] = IMPLS,
    overlap: bool = False,
    bare_profile_dir: str | None = None,
    initial_rtt: float | None = None,
) -> dict[str, list[tuple[float, float]]]:
    """Per implementation and round: (median wall ms, CPU ms per handshake), rounds interleaved.

    asgi-p2p's rounds run here, on this loop; each bare aioquic round in a fresh process that
    never imports asgi_p2p (``--bare-round``), which writes its cProfile to
    ``bare_profile_dir/bare-<round>.prof`` when that is given.
    """
    p2p = P2PHarness(overlap) if "asgi-p2p" in impls else None
    results: dict[str, list[tuple[float, float]]] = {impl: [] for impl in impls}
    with tempfile.TemporaryDirectory() as cert_dir:
        job: dict[str, Any] = {"handshakes": n, "mds": mds, "overlap": overlap, "initial_rtt": initial_rtt}
        if "aioquic" in impls:
            job["credentials"] = write_bare_credentials(cert_dir)
        if p2p is not None:
            await p2p.setup(mds)
        try:
            if p2p is not None:
                await p2p.batch(3)  # warm-up (imports, caches, first connection)
            for rnd in range(rounds):
                for impl in impls if rnd % 2 == 0 else tuple(reversed(impls)):
                    if impl == "aioquic":
                        profile = None if bare_profile_dir is None else str(Path(bare_profile_dir, f"bare-{rnd}.prof"))
                        walls, cpu = await run_bare_round({**job, "profile": profile})
                    else:
                        assert p2p is not None
                        prof = profiles.get(impl)
                        if prof is not None:
                            prof.enable()
                        try:
                            walls, cpu = await p2p.batch(n)
                        finally:
                            if prof is not None:
                                prof.disable()
                    res = (statistics.median(walls) * 1e3, cpu / n * 1e3)
                    results[impl].append(res)
                    print(
                        f"# round {rnd + 1}/{rounds} {impl}: {res[0]:.2f} ms wall, {res[1]:.2f} ms CPU",
                        file=sys.stderr,
                    )
        finally:
            if p2p is not None:
                await p2p.teardown()
    return results


def _top(profile: cProfile.Profile | str, n_handshakes: int, sort: str, limit: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.strip_dirs().sort_stats(sort).print_stats(limit)
    return f"(totals over {n_handshakes} handshakes)\n" + out.getvalue()


_SMALL, _LARGE = 5, 25  # the two batch sizes of --instructions


def count_instructions(args: argparse.Namespace) -> int:
    """Instructions per handshake (both ends) under valgrind: (I(large) - I(small)) / (large - small)."""
    if shutil.which("valgrind") is None:
        print("--instructions needs valgrind on PATH", file=sys.stderr)
        return 2
    per: dict[str, float] = {}
    cert_dir = tempfile.TemporaryDirectory()
    credentials = write_bare_credentials(cert_dir.name)
    for impl in IMPLS:
        counts = []
        for n in (_SMALL, _LARGE):
            valgrind = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
            if impl == "aioquic":  # a bare round: a process that never imports asgi_p2p
                job = {"handshakes": n, "mds": args.datagram_size, "overlap": args.overlap, "initial_rtt": 3}
                cmd = [*valgrind, *bare_round_command({**job, "credentials": credentials, "profile": None})]
            else:
                cmd = [
                    *valgrind,
                    *(sys.executable, __file__, "--only", impl, "--handshakes", str(n), "--repeat", "1"),
                    *("--initial-rtt", "3", "--datagram-size", str(args.datagram_size)),
                ]
                cmd += ["--overlap"] if args.overlap else []
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            found = re.findall(r"I\s+refs:\s+([\d,]+)", proc.stderr)
            if proc.returncode != 0 or not found:
                print(f"valgrind run failed ({impl}, {n} handshakes):\n{proc.stderr[-2000:]}", file=sys.stderr)
                return 1
            if impl == "aioquic":
                print(f"# {check_unpatched(proc.stderr, 'the bare aioquic round')}", file=sys.stderr)
            counts.append(int(found[-1].replace(",", "")))
            print(f"# {impl}, {n} handshakes: {counts[-1]:,} instructions", file=sys.stderr)
        per[impl] = (counts[1] - counts[0]) / (_LARGE - _SMALL)
    a, b = per["asgi-p2p"], per["aioquic"]
    print(f"Machine: {machine_description()}")
    print(
        f"Instructions per handshake, both ends (valgrind cachegrind; ({_LARGE} - {_SMALL} handshakes) difference; "
        f"{'overlapping' if args.overlap else 'sequential'} connections; datagram size {args.datagram_size}):\n"
    )
    print("| asgi-p2p | aioquic | ratio |\n|---|---|---|")
    print(f"| {a / 1e6:.2f} M | {b / 1e6:.2f} M | {a / b:.2f}x |")
    cert_dir.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--handshakes", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5, help="interleaved runs of each implementation")
    ap.add_argument("--datagram-size", type=int, default=1200)
    ap.add_argument(
        "--overlap",
        action="store_true",
        help="close in the background: each connection meets a peer whose paths the last one left alive",
    )
    ap.add_argument("--only", choices=IMPLS, help="measure one implementation only")
    ap.add_argument("--profile", action="store_true", help="cProfile the asgi-p2p runs, print the top entries")
    ap.add_argument("--profile-bare", action="store_true", help="cProfile the bare aioquic runs too")
    ap.add_argument("--sort", default="tottime", help="pstats sort key (tottime, cumulative)")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--instructions", action="store_true", help="instructions per handshake under valgrind")
    ap.add_argument("--initial-rtt", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--bare-round", metavar="JOB", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.bare_round is not None:
        return bare_round(args.bare_round)
    if args.instructions:
        return count_instructions(args)
    if args.initial_rtt is not None:
        _set_initial_rtt(args.initial_rtt)

    profiles: dict[str, cProfile.Profile | None] = {"asgi-p2p": cProfile.Profile() if args.profile else None}
    impls = IMPLS if args.only is None else (args.only,)
    bare_profile_dir = tempfile.TemporaryDirectory() if args.profile_bare else None
    results = asyncio.run(
        measure(
            args.handshakes,
            args.repeat,
            args.datagram_size,
            profiles,
            impls,
            overlap=args.overlap,
            bare_profile_dir=bare_profile_dir.name if bare_profile_dir is not None else None,
            initial_rtt=args.initial_rtt,
        )
    )
    tops: dict[str, cProfile.Profile | str] = {impl: prof for impl, prof in profiles.items() if prof is not None}
    if bare_profile_dir is not None:  # the bare rounds' profiles, merged into one file
        merged = str(Path(bare_profile_dir.name, "bare.prof"))
        pstats.Stats(*sorted(str(f) for f in Path(bare_profile_dir.name).glob("bare-*.prof"))).dump_stats(merged)
        tops["aioquic"] = merged
    if args.only is not None:
        return 0

    def med(impl: str, i: int) -> float:
        return statistics.median(r[i] for r in results[impl])

    def runs(impl: str, i: int) -> str:
        return ", ".join(f"{r[i]:.2f}" for r in results[impl])

    print(f"Machine: {machine_description()}")
    print(
        f"{args.handshakes} handshakes per run, {args.repeat} interleaved runs, datagram size {args.datagram_size}, "
        "client and server in one process on one event loop (CPU = both ends, close included); "
        f"{'overlapping connections (the peer known)' if args.overlap else 'each connection closed before the next'}\n"
    )
    print(
        "| metric | asgi-p2p, median (per run) | aioquic, median (per run) | ratio of medians "
        "| ratio per run: median (min-max) |\n|---|---|---|---|---|"
    )
    for label, i in (("wall ms to HANDSHAKE_DONE (median of the run)", 0), ("CPU ms per handshake, both ends", 1)):
        a, b = med("asgi-p2p", i), med("aioquic", i)
        per_run = [x[i] / y[i] for x, y in zip(results["asgi-p2p"], results["aioquic"], strict=True)]
        print(
            f"| {label} | {a:.2f} ({runs('asgi-p2p', i)}) | {b:.2f} ({runs('aioquic', i)}) | {a / b:.2f}x "
            f"| {statistics.median(per_run):.2f}x ({min(per_run):.2f}-{max(per_run):.2f}) |"
        )
    for impl, prof in tops.items():
        print(f"\n## cProfile, {impl}, sorted by {args.sort}\n")
        print(_top(prof, args.handshakes * args.repeat, args.sort, args.limit))
    if bare_profile_dir is not None:
        bare_profile_dir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

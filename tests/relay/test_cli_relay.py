"""``asgi-p2p relay`` as a subprocess on 127.0.0.1: URL output, a client through it, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
import time
from pathlib import Path

import pytest

from asgi_p2p import Node, NodeAddr, SecretKey
from asgi_p2p.discovery.directory import DirectoryClient, DirectoryError
from asgi_p2p.relay.client import RelayClient
from asgi_p2p.relay.url import RelayUrl

from .rig import RecordingSink

REPO = Path(__file__).resolve().parents[2]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASGI_P2P_", "XDG_"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "config"), PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    env.update(extra)
    return env


async def _start(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asgi_p2p",
        "relay",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *args,
        cwd=REPO,
        env=_env(home, **(env or {})),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        while not any(line.startswith("  url ") for line in lines):
            raw = await asyncio.wait_for(proc.stdout.readline(), 30)
            if not raw:
                err = await proc.stderr.read() if proc.stderr else b""
                raise AssertionError(f"relay exited early: {lines} {err.decode()}")
            lines.append(raw.decode().rstrip("\n"))
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc, lines


def _printed_url(lines: list[str]) -> RelayUrl:
    return RelayUrl.parse(next(line.split()[-1] for line in lines if line.startswith("  url ")))


async def _stop(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode if proc.returncode is not None else -1, err.decode()


def test_relay_command_prints_its_url_serves_clients_and_stops_on_sigterm(tmp_path: Path) -> None:
    url_file = tmp_path / "relay.url"

    async def main() -> None:
        proc, lines = await _start(tmp_path, "--ephemeral", "--url-file", str(url_file), "--limit-clients", "8")
        try:
            printed = next(line.split()[-1] for line in lines if line.startswith("  url "))
            url = RelayUrl.parse(url_file.read_text().strip())
            assert str(url) == printed and url.host == "127.0.0.1" and url.port > 0
            assert any(str(url.node_id) in line for line in lines if line.startswith("  node id "))
            a = await Node.bind(SecretKey.from_seed("cli-a"))
            b = await Node.bind(SecretKey.from_seed("cli-b"))
            sa, sb = RecordingSink(), RecordingSink()
            ca, cb = RelayClient(a, str(url), sa), RelayClient(b, str(url), sb)
            try:
                ca.start()
                cb.start()
                await ca.wait_connected(10)
                await cb.wait_connected(10)
                assert ca.observed_address == a.local_address
                assert ca.send_packet(b.node_id, b"through the relay process")
                await sb.wait_for(lambda: len(sb.packets) == 1)
                assert sb.packets == [(a.node_id, b"through the relay process")]
                # the same process serves the node-record directory (on the Unix clock)
                assert any(line.startswith("  directory serving node records (up to 10000") for line in lines)
                loop = asyncio.get_running_loop()
                offset = time.time() - loop.time()
                relay_addr = NodeAddr(url.node_id, [url.address])
                da = DirectoryClient(a, relay_addr, clock_offset=offset, refresh=False)
                db = DirectoryClient(b, relay_addr, clock_offset=offset, refresh=False)
                await da.publish(a.node_addr(), name="cli-alice")
                found = await db.resolve_name("cli-alice")
                assert found.node_id == a.node_id and found.relay_url is None
                assert list(found.direct_addresses) == [a.local_address]
                code, err = await _stop(proc)
                assert code == 0, err
                assert "SIGTERM" in err and "shutting down" in err
                await sa.wait_for(lambda: not ca.connected)  # the relay said goodbye
            finally:
                await ca.close()
                await cb.close()
                await a.close()
                await b.close()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    asyncio.run(main())


@pytest.mark.parametrize("plane", ["on", "off"])
def test_relay_command_offers_the_data_plane_unless_relay_plane_is_off(tmp_path: Path, plane: str) -> None:
    """``ASGI_P2P_RELAY_PLANE=off`` (an operator whose firewall drops the plane's datagrams): the relay
    process offers no data plane, and its clients forward on DATAGRAM frames."""

    async def main() -> None:
        proc, lines = await _start(tmp_path, "--ephemeral", env={"ASGI_P2P_RELAY_PLANE": plane})
        a = await Node.bind(SecretKey.from_seed("cli-plane-a"))
        b = await Node.bind(SecretKey.from_seed("cli-plane-b"))
        sa, sb = RecordingSink(), RecordingSink()
        url = str(_printed_url(lines))
        ca, cb = RelayClient(a, url, sa), RelayClient(b, url, sb)
        try:
            ca.start()
            cb.start()
            await ca.wait_connected(10)
            await cb.wait_connected(10)
            for i in range(1, 4):  # round trips through the relay: its PLANE_TOKEN came first, if any
                assert ca.send_packet(b.node_id, b"ping")
                await sb.wait_for(lambda i=i: len(sb.packets) == i)  # type: ignore[misc]
                assert cb.send_packet(a.node_id, b"pong")
                await sa.wait_for(lambda i=i: len(sa.packets) == i)  # type: ignore[misc]
            if plane == "on":
                deadline = asyncio.get_running_loop().time() + 10
                while not (ca.on_plane and cb.on_plane):  # (the hellos' answers are no sink event)
                    assert asyncio.get_running_loop().time() < deadline, "the clients never went on the plane"
                    await asyncio.sleep(0.01)
            else:
                assert ca.plane_stats is None and cb.plane_stats is None and not ca.on_plane
            code, err = await _stop(proc)
            assert code == 0, err
        finally:
            await ca.close()
            await cb.close()
            await a.close()
            await b.close()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    asyncio.run(main())


def test_relay_command_keeps_its_identity_in_a_0600_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "relay.key"

    async def one_run() -> RelayUrl:
        proc, lines = await _start(tmp_path, "--key-file", str(key_file))
        code, err = await _stop(proc)
        assert code == 0, err
        return _printed_url(lines)

    first = asyncio.run(one_run())
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert SecretKey.load(key_file).node_id == first.node_id
    assert asyncio.run(one_run()).node_id == first.node_id


def test_relay_command_with_no_directory_refuses_directory_connections(tmp_path: Path) -> None:
    async def main() -> None:
        proc, lines = await _start(tmp_path, "--ephemeral", "--no-directory")
        try:
            assert "  directory off (--no-directory)" in lines
            url = _printed_url(lines)
            a = await Node.bind(SecretKey.from_seed("cli-nodir"))
            try:
                client = DirectoryClient(a, NodeAddr(url.node_id, [url.address]), timeout=10, refresh=False)
                with pytest.raises(DirectoryError, match="unreachable"):
                    await client.fetch(a.node_id)
                # relaying still works
                ca = RelayClient(a, str(url), RecordingSink())
                ca.start()
                try:
                    await ca.wait_connected(10)
                finally:
                    await ca.close()
            finally:
                await a.close()
            code, err = await _stop(proc)
            assert code == 0, err
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    asyncio.run(main())


@pytest.mark.parametrize("flag", ["--limit-clients", "--directory-capacity"])
def test_relay_command_rejects_a_bad_limit(tmp_path: Path, flag: str) -> None:
    async def main() -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "asgi_p2p",
            "relay",
            "--ephemeral",
            flag,
            "0",
            cwd=REPO,
            env=_env(tmp_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode or 0, err.decode()

    code, err = asyncio.run(main())
    assert code == 2 and flag in err and "must be positive" in err


def test_relay_command_keeps_its_directory_across_a_restart(tmp_path: Path) -> None:
    key_file = tmp_path / "relay.key"

    async def run(publish: bool) -> tuple[list[str], NodeAddr | None]:
        proc, lines = await _start(tmp_path, "--key-file", str(key_file))
        try:
            url = _printed_url(lines)
            offset = time.time() - asyncio.get_running_loop().time()
            node = await Node.bind(SecretKey.from_seed("cli-persist-a" if publish else "cli-persist-b"))
            try:
                client = DirectoryClient(node, url.node_addr(), clock_offset=offset, refresh=False)
                found = None
                if publish:
                    await client.publish(node.node_addr(), name="kept-across-restarts")
                else:
                    found = await client.resolve_name("kept-across-restarts")
            finally:
                await node.close()
            code, err = await _stop(proc)
            assert code == 0, err
            return lines, found
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    first, _ = asyncio.run(run(publish=True))
    db = tmp_path / ".local" / "share" / "asgi-p2p" / f"relay-directory-{SecretKey.load(key_file).node_id}.sqlite3"
    assert f"  records  kept in {db} (0 loaded)" in first
    second, found = asyncio.run(run(publish=False))
    assert f"  records  kept in {db} (1 loaded)" in second
    assert found is not None and found.node_id == SecretKey.from_seed("cli-persist-a").node_id
    # --no-directory-db keeps nothing; --directory-db chooses the file
    elsewhere = tmp_path / "elsewhere.sqlite3"

    async def lines_of(*flags: str) -> list[str]:
        proc, lines = await _start(tmp_path, "--key-file", str(key_file), *flags)
        code, err = await _stop(proc)
        assert code == 0, err
        return lines

    assert "  records  in memory only" in asyncio.run(lines_of("--no-directory-db"))
    assert f"  records  kept in {elsewhere} (0 loaded)" in asyncio.run(lines_of("--directory-db", str(elsewhere)))
    assert elsewhere.exists()

"""mDNS discovery between two processes inside a private network namespace.

The namespace has only a loopback interface (multicast enabled, a route for
224.0.0.0/4), so the announcements never reach the host's networks.  Needs
root (to create the namespace); without it the test fails saying so.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from asgi_p2p.discovery.mdns import MdnsDiscovery
from asgi_p2p.identity import NodeAddr, SecretKey

REPO = Path(__file__).resolve().parents[2]
PEER = Path(__file__).with_name("mdns_peer.py")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("the mDNS test creates a network namespace and needs root (run the suite as root)")
    name = f"asgip2p-mdns-{os.getpid()}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "link", "set", "lo", "multicast", "on")
        _ip("-n", name, "route", "add", "224.0.0.0/4", "dev", "lo")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=10)


async def _in_ns(ns: str, *args: str) -> asyncio.subprocess.Process:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, sys.executable, str(PEER), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env, cwd=str(REPO),
    )  # fmt: skip


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()  # only processes this test started, by their own handle
    await proc.wait()


def test_mdns_announce_and_resolve_in_namespace(netns: str) -> None:
    key = SecretKey.from_seed("mdns-alice")

    async def main() -> dict[str, dict[str, object]]:
        announcer = await _in_ns(netns, "announce", "mdns-alice", "45678", "alice.lan")
        resolver: asyncio.subprocess.Process | None = None
        try:
            assert announcer.stdout is not None and announcer.stderr is not None
            line = await asyncio.wait_for(announcer.stdout.readline(), 30)
            if line.strip() != b"ready":
                err = await announcer.stderr.read()
                pytest.fail(f"announcer did not start: {line!r} {err.decode(errors='replace')}")
            resolver = await _in_ns(netns, "resolve", str(key.node_id), "alice.lan")
            out, err = await asyncio.wait_for(resolver.communicate(), 60)
            assert resolver.returncode == 0, err.decode(errors="replace")
            result: dict[str, dict[str, object]] = json.loads(out)
            return result
        finally:
            if announcer.stdin is not None:
                announcer.stdin.close()
            try:
                await asyncio.wait_for(announcer.wait(), 10)
            except TimeoutError:
                pass
            await _stop(announcer)
            if resolver is not None:
                await _stop(resolver)

    result = asyncio.run(main())
    expected = {"node": str(key.node_id), "addrs": [["127.0.0.1", 45678]], "relay": "https://relay.example/"}
    assert result["by_id"] == expected
    assert result["by_name"] == expected


def test_mdns_is_opt_in_and_opens_nothing_until_used() -> None:
    mdns = MdnsDiscovery()
    assert mdns._azc is None  # constructing the source sends and binds nothing
    with pytest.raises(ValueError, match="no concrete IP address"):
        mdns._service_info(NodeAddr(SecretKey.from_seed("x").node_id, [("0.0.0.0", 1)]), None)
    assert mdns._azc is None

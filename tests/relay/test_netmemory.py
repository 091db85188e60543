"""The relay client's per-network memory of its UDP/TCP race (asgi_p2p.relay.netmemory), sans-I/O."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import pytest

from asgi_p2p.relay.netmemory import Network, TransportMemory, source_address

RELAY = "r" * 52
HOME = Network("10.2.0.2", f"{RELAY}@203.0.113.2:3340")
OFFICE = Network("192.168.7.20", f"{RELAY}@203.0.113.2:3340")
T0 = 1_800_000_000.0


def test_a_network_that_blocked_udp_is_remembered_and_another_is_not() -> None:
    memory = TransportMemory()
    assert memory.udp_blocked_since(HOME, T0) is None
    assert memory.remember(HOME, "tcp", T0)
    assert memory.udp_blocked_since(HOME, T0 + 5) == T0
    assert memory.udp_blocked_since(OFFICE, T0 + 5) is None  # another source address: UDP first
    other_relay = Network(HOME.local, f"{'s' * 52}@203.0.113.6:3340")
    assert memory.udp_blocked_since(other_relay, T0 + 5) is None


def test_udp_working_again_forgets_the_network() -> None:
    memory = TransportMemory()
    memory.remember(HOME, "tcp", T0)
    assert memory.remember(HOME, "udp", T0 + 60)
    assert memory.udp_blocked_since(HOME, T0 + 61) is None
    assert not memory.remember(HOME, "udp", T0 + 62)  # nothing to forget: no change
    with pytest.raises(ValueError, match="'udp' or 'tcp'"):
        memory.remember(HOME, "quic", T0)


def test_entries_expire_and_are_bounded_in_number() -> None:
    memory = TransportMemory(max_entries=3, max_age=100.0)
    memory.remember(HOME, "tcp", T0)
    assert memory.udp_blocked_since(HOME, T0 + 100) == T0
    assert memory.udp_blocked_since(HOME, T0 + 101) is None and len(memory) == 0
    nets = [Network(f"10.0.0.{i}", HOME.relay) for i in range(5)]
    for i, net in enumerate(nets):
        memory.remember(net, "tcp", T0 + i)
    assert len(memory) == 3  # the oldest two were forgotten
    assert [memory.udp_blocked_since(n, T0 + 5) is not None for n in nets] == [False, False, True, True, True]
    # an entry from far in the future (a clock that jumped back) is not trusted
    memory.remember(HOME, "tcp", T0 + 10_000)
    assert memory.udp_blocked_since(HOME, T0 + 5) is None
    with pytest.raises(ValueError):
        TransportMemory(max_entries=0)


def test_the_memory_is_kept_in_a_private_file_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "networks" / "node.json"
    memory = TransportMemory(path)
    memory.remember(HOME, "tcp", T0)
    assert path.stat().st_mode & 0o777 == 0o600
    again = TransportMemory(path)
    assert again.udp_blocked_since(HOME, T0 + 1) == T0
    assert again.udp_blocked_since(OFFICE, T0 + 1) is None
    again.remember(HOME, "udp", T0 + 2)
    assert TransportMemory(path).udp_blocked_since(HOME, T0 + 3) is None
    assert [p.name for p in path.parent.iterdir()] == ["node.json"]  # no temporary file left


def test_a_file_others_can_read_or_a_damaged_one_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "node.json"
    TransportMemory(path).remember(HOME, "tcp", T0)
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, "asgi_p2p.relay"):
        assert len(TransportMemory(path)) == 0
    assert "accessible by group or others" in caplog.text
    for bad, why in [
        (b"not json", "not JSON"),
        (b'{"format": 9, "udp_blocked": {}}', "format 1"),
        (json.dumps({"format": 1, "udp_blocked": {"k": "yesterday"}}).encode(), "bad entry"),
    ]:
        path.write_bytes(bad)
        os.chmod(path, 0o600)
        caplog.clear()
        with caplog.at_level(logging.WARNING, "asgi_p2p.relay"):
            assert len(TransportMemory(path)) == 0
        assert why in caplog.text
    path.write_bytes(b" " * (300 * 1024))
    with caplog.at_level(logging.WARNING, "asgi_p2p.relay"):
        assert len(TransportMemory(path)) == 0
    assert "too large" in caplog.text


def test_a_file_with_too_many_entries_keeps_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    entries = {f"10.0.0.{i}>{HOME.relay}": T0 + i for i in range(10)}
    path.write_bytes(json.dumps({"format": 1, "udp_blocked": entries}).encode())
    os.chmod(path, 0o600)
    memory = TransportMemory(path, max_entries=4)
    assert len(memory) == 4
    assert memory.udp_blocked_since(Network("10.0.0.9", HOME.relay), T0 + 10) == T0 + 9
    assert memory.udp_blocked_since(Network("10.0.0.5", HOME.relay), T0 + 10) is None


def test_the_network_is_the_source_address_towards_the_relay() -> None:
    seen: list[tuple[str, int]] = []

    def source(addr: tuple[str, int]) -> str | None:
        seen.append(addr)
        return "10.9.0.7"

    memory = TransportMemory(source=source)
    net = memory.network(RELAY, ("203.0.113.2", 3340))
    assert net == Network("10.9.0.7", f"{RELAY}@203.0.113.2:3340") and seen == [("203.0.113.2", 3340)]
    assert memory.network(RELAY, None) == Network("", RELAY)
    v6 = TransportMemory(source=lambda _a: None).network(RELAY, ("2001:db8::1", 3340))
    assert v6 == Network("", f"{RELAY}@[2001:db8::1]:3340")


def test_source_address_asks_the_routing_table_without_sending() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.setblocking(False)
        assert source_address(listener.getsockname()) == "127.0.0.1"
        with pytest.raises(BlockingIOError):
            listener.recv(10)  # nothing was sent
    assert source_address(("not an address", 1)) is None

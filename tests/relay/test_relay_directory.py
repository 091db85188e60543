"""The relay serves the node-record directory on its own endpoint (UDP 127.0.0.1 and the simulator)."""

from __future__ import annotations

import pytest

from asgi_p2p import SecretKey
from asgi_p2p.discovery.directory import DirectoryClient, DirectoryError
from asgi_p2p.discovery.records import Directory
from asgi_p2p.identity import NodeAddr
from asgi_p2p.relay.server import RelayServer
from tests.harness import Harness

from .rig import Rig


def _directory_of(relay: RelayServer) -> NodeAddr:
    return NodeAddr(relay.node_id, [relay.url.address])


async def _bind(h: Harness, name: str, *, directory: Directory | bool) -> RelayServer:
    key = SecretKey.from_seed(f"relay-dir-{name}")
    if h.name == "sim":
        host = h.sim.host(f"{name}-host")  # type: ignore[attr-defined]
        return await RelayServer.bind(key, host="0.0.0.0", network=host, directory=directory)
    return await RelayServer.bind(key, host="127.0.0.1", directory=directory)


def test_a_node_publishes_to_the_relays_directory_and_another_resolves_it(net: Harness) -> None:
    async def main(h: Harness) -> None:
        rig = Rig(h)
        try:
            relay = await rig.relay()
            assert relay.directory is not None
            a = await h.endpoint("alice")
            b = await h.endpoint("bob")
            da = DirectoryClient(a, _directory_of(relay), ttl=600, refresh=False)
            db = DirectoryClient(b, _directory_of(relay))
            published = NodeAddr(a.node_id, [a.local_address], relay_url=str(relay.url))
            await da.publish(published, name="alice")
            assert len(relay.directory.directory) == 1
            found = await db.resolve(a.node_id)
            assert found.node_id == a.node_id
            assert list(found.direct_addresses) == [a.local_address]
            assert found.relay_url == str(relay.url)
            by_name = await db.resolve_name("alice")
            assert by_name.node_id == a.node_id
            with pytest.raises(DirectoryError, match="no record"):
                await db.resolve(b.node_id)  # bob never published
            await da.unpublish()
            with pytest.raises(DirectoryError, match="no record"):
                await db.resolve(a.node_id)
        finally:
            await rig.aclose()

    net.run(main)


def test_the_relays_directory_is_bounded_by_its_capacity(net: Harness) -> None:
    async def main(h: Harness) -> None:
        rig = Rig(h)
        try:
            relay = await _bind(h, "bounded", directory=Directory(capacity=1))
            rig.relays.append(relay)
            a = await h.endpoint("a")
            b = await h.endpoint("b")
            await DirectoryClient(a, _directory_of(relay), refresh=False).publish(a.node_addr())
            with pytest.raises(DirectoryError, match="FULL") as info:
                await DirectoryClient(b, _directory_of(relay), refresh=False).publish(b.node_addr())
            assert info.value.status is not None and info.value.status.name == "FULL"
        finally:
            await rig.aclose()

    net.run(main)


def test_a_relay_without_directory_refuses_directory_connections(net: Harness) -> None:
    async def main(h: Harness) -> None:
        rig = Rig(h)
        try:
            relay = await _bind(h, "nodir", directory=False)
            rig.relays.append(relay)
            assert relay.directory is None
            a = await h.endpoint("a")
            client = DirectoryClient(a, _directory_of(relay), timeout=5, refresh=False)
            with pytest.raises(DirectoryError, match="unreachable"):
                await client.publish(a.node_addr())
            # the relay itself still works
            _ea, ca, _sa = await rig.client("c", relay)
            await ca.wait_connected(10)
            assert relay.clients == [_ea.node_id]
        finally:
            await rig.aclose()

    net.run(main)


def test_the_relays_directory_limits_records_per_source_address(net: Harness) -> None:
    """On 127.0.0.1 both nodes share an address: the second is refused; in the simulator each host has its own."""

    async def main(h: Harness) -> None:
        rig = Rig(h)
        try:
            relay = await _bind(h, "per-address", directory=Directory(max_per_address=1))
            rig.relays.append(relay)
            assert relay.directory is not None
            a = await h.endpoint("a")
            b = await h.endpoint("b")
            await DirectoryClient(a, _directory_of(relay), refresh=False).publish(a.node_addr())
            store = relay.directory.directory
            if h.name == "udp":
                assert store.count_from("127.0.0.1") == 1
                with pytest.raises(DirectoryError, match=r"address 127\.0\.0\.1 holds its maximum of 1") as info:
                    await DirectoryClient(b, _directory_of(relay), refresh=False).publish(b.node_addr())
                assert info.value.status is not None and info.value.status.name == "FULL"
            else:
                await DirectoryClient(b, _directory_of(relay), refresh=False).publish(b.node_addr())
                assert len(store) == 2 and store.count_from(a.node_addr().direct_addresses[0][0]) == 1
        finally:
            await rig.aclose()

    net.run(main)

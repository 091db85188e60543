"""A first contact sent while the relay connection is still handshaking never takes the plane's datagrams.

The relay offers its data plane (a PlaneToken frame) with its handshake flight; the client
registers the plane's receiver for the relay's address at once, but its relay connection is
in use only after its own Finished.  A first contact sent in between (the end-to-end
handshake's next Initial, which arrives in the same pass on loopback) registered the
first-contact receiver for the same address again, replacing the plane's: every packet the
relay then forwarded on the plane was dropped as an invalid first-contact reply, until the
dial's window closed, and the end-to-end handshake waited for a probe timeout or a direct
path (3 s in 1 of ~10 fresh dials by ticket to a node and its relay on loopback,
``benchmarks/flood.py --targets both``).  The plane's receiver hands first-contact replies
on itself, so it is kept.
"""

from __future__ import annotations

import pytest

from asgi_p2p.relay.plane import client_demux

from ..harness import Harness
from .rig import Rig
from .test_plane import run


@pytest.mark.parametrize("net", ["sim", "udp"], indirect=True)
def test_registering_for_first_contact_replies_keeps_a_live_planes_receiver(net: Harness) -> None:
    """What a first contact sent before the relay Finished does (``_send_first_contact`` registers
    for replies while the client has no connection in use), done on a client on the plane: the
    relay's plane datagrams still reach it."""

    async def scenario(rig: Rig) -> None:
        relay = await rig.relay()
        a, ca, sa = await rig.client("a", relay)
        _b, cb, _sb = await rig.client("b", relay)
        await ca.wait_connected(10)
        await cb.wait_connected(10)
        (relay_addr,) = client_demux(a.router).relays  # the plane's receiver
        assert ca._take_first_replies(relay_addr)
        # b's packets reach a, on the plane once a's hello is answered
        for i in range(20):
            assert cb.send_packet(a.node_id, b"p%d" % i)
            await sa.wait_for(lambda: len(sa.packets) == i + 1, timeout=5)  # noqa: B023
        assert [p for _, p in sa.packets] == [b"p%d" % i for i in range(20)]
        assert ca.on_plane and relay.plane_stats.sent > 0
        assert ca.stats.dropped_invalid == 0

    run(net, scenario)

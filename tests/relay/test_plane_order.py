"""A client's relayed packets keep their order when the relay moves it onto the data plane.

The relay sends packets for a client as RECV frames on its relay connection (queued, sent at
the end of the loop pass) until the client's first plane datagram arrives, then straight to the
socket as plane datagrams.  A packet forwarded on the plane in the same pass as one still queued
on the connection must not overtake it: a returning client's 0-RTT answer then arrives before
the handshake packet that unlocks its keys, is dropped, and comes again only after a probe
timeout (about 2 relay round trips late).  Whether the two land in one pass depends only on the
order of same-instant events, which one extra timer anywhere on the loop changes: the scenario
runs under several such perturbations and every one must be fast.
"""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from asgi_p2p import Node, SecretKey
from asgi_p2p.http import P2PTransport
from asgi_p2p.relay.plane import HELLO, PLANE_MAGIC, client_demux, encode_plane, is_plane
from asgi_p2p.relay.proto import PLANE_TOKEN_SIZE
from asgi_p2p.sim import Simulation
from tests.harness import Harness

from .rig import Rig
from .test_first_contact import LATENCY, RTT, _fresh_get, _rig
from .test_plane import _until, run

#: a no-op loop timer this far ahead (None: none): only the order of same-instant events changes
#: (before the fix, 0.2 s and more delayed the answer by ~174 ms; these cover both orders)
PERTURBATIONS = [None, 0.0, 0.1, 0.2, 0.3, 1.0, 5.0, 100.0]


@pytest.mark.parametrize("timer_at", PERTURBATIONS)
@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_returning_clients_early_answer_is_prompt_whatever_the_event_order(
    sim: Simulation, timer_at: float | None
) -> None:
    loop = asyncio.get_running_loop()
    if timer_at is not None:
        loop.call_at(loop.time() + timer_at, lambda: None)
    relay, server, phone = await _rig(sim)
    _took, first, _ = await _fresh_get("returning", phone, relay, server)
    tickets = first.export_session_tickets()
    await first.close(timeout=0.0)
    t0 = loop.time()
    second = await Node.bind(
        SecretKey.from_seed("returning"), host="0.0.0.0", network=phone, relay_url=str(relay.url), rng=random.Random(4)
    )
    assert second.import_session_tickets(tickets) >= 1
    async with httpx.AsyncClient(
        transport=P2PTransport(second, addrs=[server.addr]), base_url=f"https://{server.node_id}"
    ) as http:
        r = await asyncio.wait_for(http.get("/"), 5)
    took = loop.time() - t0
    assert r.text == "hi 1"  # served from the 0-RTT data
    # relay Finished, then the 0-RTT request and its answer (the slow order took 0.297 s)
    assert took <= 3 * RTT + 0.01, took
    assert relay.plane_stats.sent > 0  # (the client did move onto the plane)
    await second.close()


@pytest.mark.parametrize("net", ["sim"], indirect=True)
def test_a_clients_send_frames_go_before_its_first_plane_datagram(net: Harness) -> None:
    """The relay answers a's hello in the pass in which a queued a SEND frame (sent at the end of
    the pass): the packet a sends next, on the plane, goes after it, and b gets both in order."""

    async def scenario(rig: Rig) -> None:
        relay = await rig.relay()
        a, ca, _sa = await rig.client("a", relay)
        b, cb, sb = await rig.client("b", relay)
        send = a.router.sendto
        hellos: list[tuple[bytes, tuple[str, int]]] = []

        def hold_hellos(data: bytes, addr: tuple[str, int]) -> None:
            if is_plane(data):  # (only hellos before a is on the plane)
                hellos.append((data, addr))
                return
            send(data, addr)

        a.router.sendto = hold_hellos  # type: ignore[method-assign]
        await ca.wait_connected(10)
        await cb.wait_connected(10)
        await _until(lambda: cb.on_plane and len(hellos) > 0)
        hello, relay_addr = hellos[-1]
        a.router.sendto = send  # type: ignore[method-assign]
        # in one pass: a SEND frame queued, the relay's answer to a's hello, a packet on the plane
        assert ca.send_packet(b.node_id, b"first") and not ca.on_plane
        answer = encode_plane(hello[len(PLANE_MAGIC) : len(PLANE_MAGIC) + PLANE_TOKEN_SIZE], relay.node_id, HELLO)
        client_demux(a.router).plane_datagram_received(answer, relay_addr)
        assert ca.on_plane
        assert ca.send_packet(b.node_id, b"second")
        await sb.wait_for(lambda: len(sb.packets) == 2)
        assert [p for _, p in sb.packets] == [b"first", b"second"]
        assert ca.plane_stats is not None and ca.plane_stats.sent == 1

    run(net, scenario)

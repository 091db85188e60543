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
from asgi_p2p.sim import Simulation

from .test_first_contact import LATENCY, RTT, _fresh_get, _rig

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

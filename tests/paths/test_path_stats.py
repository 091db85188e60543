"""PathStats: what a prober counts for metrics (pings, answers, forged and replayed packets)."""

from __future__ import annotations

import random

from asgi_p2p.identity import SecretKey
from asgi_p2p.paths.disco import Ping, seal
from asgi_p2p.paths.prober import PathProber
from asgi_p2p.paths.stats import PathStats


def test_prober_counts_answers_forged_replayed_and_malformed_packets_into_shared_stats() -> None:
    me, peer, mallory = SecretKey.generate(), SecretKey.generate(), SecretKey.generate()
    stats = PathStats()
    prober = PathProber(me, peer.node_id, random.Random(1), stats=stats)
    ping = seal(Ping(b"\x01" * 12), peer, me.node_id, 1000.0)
    prober.receive(ping, ("192.0.2.1", 4000), 1000.0)
    assert stats.disco_pings_answered == 1  # a PONG is queued for it
    prober.receive(ping, ("192.0.2.1", 4000), 1000.1)  # the same packet again
    forged = seal(Ping(b"\x02" * 12), mallory, me.node_id, 1000.0)  # signed by someone else
    prober.receive(forged, ("192.0.2.1", 4000), 1000.2)
    prober.receive(ping[:-5], ("192.0.2.1", 4000), 1000.3)  # truncated
    prober.receive(b"\x00junk", ("192.0.2.1", 4000), 1000.4)
    assert stats.disco_pings_answered == 1
    assert stats.disco_rejected["replayed"] == 1
    assert dict(stats.disco_rejected) == {"replayed": 1, "forged": 1, "malformed": 2}
    # a second prober of the same endpoint adds to the same counters
    other = PathProber(me, mallory.node_id, random.Random(2), stats=stats)
    other.receive(seal(Ping(b"\x03" * 12), mallory, me.node_id, 1000.0), ("192.0.2.9", 4000), 1000.5)
    assert stats.disco_pings_answered == 2
    other.add_candidates([("192.0.2.9", 4000)], 1000.5)
    assert [t for t in other.poll(1000.5) if t.addr == ("192.0.2.9", 4000)]
    assert stats.disco_pings_sent >= 1

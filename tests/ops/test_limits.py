"""The handshake rate per source address: unit (the admission table) and end to end (real UDP)."""

from __future__ import annotations

import pytest

from asgi_p2p import NetworkConfig, Node
from asgi_p2p.endpoint.admission import AdmissionTable, Verdict
from asgi_p2p.errors import P2PError


def test_handshake_rate_retries_unvalidated_and_refuses_validated_sources_separately() -> None:
    table = AdmissionTable(NetworkConfig(handshake_rate_per_address=2.0))  # bursts of 4
    verdicts = [table.decide("a", validated=False, established=0, now=0.0)[0] for _ in range(5)]
    assert verdicts == [Verdict.ADMIT] * 4 + [Verdict.RETRY]
    assert table.stats.rate_limited == 1
    # a spoofer used up a's unvalidated budget: a, coming back with a Retry token, has its own
    assert table.decide("a", validated=True, established=0, now=0.0)[0] is Verdict.ADMIT
    assert table.decide("b", validated=False, established=0, now=0.0)[0] is Verdict.ADMIT  # another source
    for _ in range(3):
        table.decide("a", validated=True, established=0, now=0.0)
    verdict, reason = table.decide("a", validated=True, established=0, now=0.0)
    assert verdict is Verdict.REFUSE and "handshake_rate_per_address" in reason
    assert table.stats.refused_by_reason["handshake_rate_per_address"] == 1
    assert table.decide("a", validated=False, established=0, now=0.5)[0] is Verdict.ADMIT  # refilled
    assert table.decide("a", validated=False, established=0)[0] is Verdict.ADMIT  # no clock: no rate limit


def test_handshake_rate_off() -> None:
    table = AdmissionTable(NetworkConfig(handshake_rate_per_address=0))
    assert all(table.decide("a", validated=False, established=0, now=0.0)[0] is Verdict.ADMIT for _ in range(1000))


async def test_handshake_rate_end_to_end_retry_then_refusal() -> None:
    # 0.1 handshakes a second: one token per bucket, none refilled during the test
    server = await Node.bind(host="127.0.0.1", config=NetworkConfig(handshake_rate_per_address=0.1))
    dialers = [await Node.bind(host="127.0.0.1") for _ in range(3)]
    try:
        await dialers[0].connect(server.node_addr())  # the unvalidated budget
        await dialers[1].connect(server.node_addr())  # a Retry, then the validated budget
        with pytest.raises(P2PError, match="handshake_rate_per_address"):
            await dialers[2].connect(server.node_addr())
        stats = server.admission_stats
        assert stats.rate_limited == 2 and stats.retries == 2
        assert stats.refused_by_reason["handshake_rate_per_address"] == 1
        assert stats.established == 2
    finally:
        for node in (*dialers, server):
            await node.close()

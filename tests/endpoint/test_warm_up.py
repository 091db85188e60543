"""A node's first handshake is warmed up at bind (issue 12: restart -> next response within 2 RTTs)."""

from __future__ import annotations

from asgi_p2p import Node, SecretKey
from asgi_p2p.endpoint.tls import handshakes_in_memory, node_certificate, warm_up_handshakes


def test_the_in_memory_handshakes_complete_full_then_resumed() -> None:
    key = SecretKey.from_seed("warm-up")
    assert handshakes_in_memory(node_certificate(key), key) == (True, True)


async def test_binding_a_node_on_real_udp_warms_the_process_up_once() -> None:
    node = await Node.bind(SecretKey.from_seed("warm-up node"), host="127.0.0.1", port=0)
    try:
        key = SecretKey.from_seed("warm-up")
        # whichever bind ran first in this process did it; a later call does nothing
        assert warm_up_handshakes(node_certificate(key), key) is False
    finally:
        await node.close()

"""A node's first handshake is warmed up at bind (issue 12: restart -> next response within 2 RTTs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from asgi_p2p import Node, SecretKey
from asgi_p2p.endpoint.tls import handshakes_in_memory, node_certificate, warm_up_handshakes

ROOT = Path(__file__).resolve().parents[2]


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


def test_the_warm_up_collects_the_start_up_heap_so_no_full_collection_lands_on_a_first_peer() -> None:
    # a fresh process: cyclic garbage that only a full (generation 2) collection frees, as
    # a process's start-up leaves; CPython would otherwise collect it whenever allocations
    # next tip it over, as often on a restarted server's first connection (10-20 ms)
    script = """
import gc, weakref
from asgi_p2p import SecretKey
from asgi_p2p.endpoint.tls import node_certificate, warm_up_handshakes

class Cycle:
    pass

def make_garbage():
    first = Cycle()
    first.self = first
    return weakref.ref(first), first

ref, held = make_garbage()
gc.collect(1)  # survives generations 0 and 1: now in the oldest generation
del held
key = SecretKey.from_seed("warm-up")
assert ref() is not None
full = gc.get_stats()[2]["collections"]
assert warm_up_handshakes(node_certificate(key), key) is True
print(ref() is None, gc.get_stats()[2]["collections"] - full)
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout.split()
    assert out[0] == "True"  # the start-up garbage is gone: a full collection ran at the warm-up
    assert int(out[1]) >= 1

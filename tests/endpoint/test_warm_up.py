"""A serving node's first handshake is warmed up when it starts serving (issue 12: restart -> next
response within 2 RTTs), and a node that only dials pays nothing for it at bind (issue 11: a
returning client's first response)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from asgi_p2p import SecretKey
from asgi_p2p.endpoint.tls import handshakes_in_memory, node_certificate

ROOT = Path(__file__).resolve().parents[2]


def test_the_in_memory_handshakes_complete_full_then_resumed() -> None:
    key = SecretKey.from_seed("warm-up")
    assert handshakes_in_memory(node_certificate(key), key) == (True, True)


def _fresh_process(script: str) -> list[str]:
    """Run ``script`` in a new interpreter (the warm-up is once per process); its stdout words."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_a_node_that_only_dials_does_not_warm_up_at_bind() -> None:
    # the warm-up (20-30 ms of CPU) would sit in series before a client's first request: a
    # returning client's first response on the WAN rig was that much later with it at bind
    out = _fresh_process(
        """
import asyncio
from asgi_p2p import Node, SecretKey
from asgi_p2p.endpoint.tls import node_certificate, warm_up_handshakes

async def main():
    node = await Node.bind(SecretKey.from_seed("client"), host="127.0.0.1", port=0)
    key = SecretKey.from_seed("warm-up")
    print(warm_up_handshakes(node_certificate(key), key))  # True: the bind did not run it
    print(node.warm_up())  # False: once per process
    await node.close()

asyncio.run(main())
"""
    )
    assert out == ["True", "False"]


def test_a_node_that_starts_serving_warms_the_process_up_once() -> None:
    out = _fresh_process(
        """
import asyncio, gc
from asgi_p2p import Node, SecretKey
from asgi_p2p.endpoint.tls import node_certificate, warm_up_handshakes
from asgi_p2p.http import H3Server

async def app(scope, receive, send):
    pass

async def main():
    node = await Node.bind(SecretKey.from_seed("server"), host="127.0.0.1", port=0)
    full = gc.get_stats()[2]["collections"]
    server = H3Server(app, node, lifespan="off")
    await server.startup()
    print(gc.get_stats()[2]["collections"] - full >= 1)  # the start-up heap was collected
    key = SecretKey.from_seed("warm-up")
    print(warm_up_handshakes(node_certificate(key), key))  # False: the server's start ran it
    print(node.warm_up())  # once per process
    await server.shutdown()
    await node.close()

asyncio.run(main())
"""
    )
    assert out == ["True", "False", "False"]


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

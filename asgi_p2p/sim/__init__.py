"""Deterministic simulated network: virtual-time loop, network graph, NAT boxes, faults.

Quick start::

    from asgi_p2p.sim import Simulation

    sim = Simulation(seed=1)
    alice = sim.host("alice")
    bob = sim.host("bob", nat="symmetric")

    async def main() -> None:
        got = asyncio.get_running_loop().create_future()
        sock_b = await bob.bind("0.0.0.0", 5000, lambda data, addr: got.set_result(data))
        ...

    sim.run(main(), time_limit=60)

Every :class:`Host` is a :class:`~asgi_p2p.net.DatagramNetwork`, so the real
endpoint binds on it unchanged.  See ``docs/simulator.md``.
"""

from __future__ import annotations

from .apps import SimServer
from .determinism import apply as apply_determinism_patches
from .discovery import MockDNS, PeerRecord
from .errors import (
    RealIOForbidden,
    SimulationDeadlock,
    SimulationError,
    SimulationLivelock,
    SimulationTimeLimit,
    ThreadForbidden,
    WallClockSleep,
)
from .loop import START_TIME, VirtualTimeLoop
from .nat import NAT_PRESETS, Filtering, Mapping, NatConfig
from .network import HEADER_OVERHEAD, Fault, Host, Link, NatBox, Node, SimSocket, Simulation
from .swarm import FaultPlan, Faults, SeedResult, SwarmReport, swarm
from .trace import Trace, TraceEvent

__all__ = [
    "HEADER_OVERHEAD",
    "NAT_PRESETS",
    "START_TIME",
    "Fault",
    "FaultPlan",
    "Faults",
    "Filtering",
    "Host",
    "Link",
    "Mapping",
    "MockDNS",
    "NatBox",
    "NatConfig",
    "Node",
    "PeerRecord",
    "RealIOForbidden",
    "SeedResult",
    "SimServer",
    "SimSocket",
    "Simulation",
    "SimulationDeadlock",
    "SimulationError",
    "SimulationLivelock",
    "SimulationTimeLimit",
    "SwarmReport",
    "ThreadForbidden",
    "Trace",
    "TraceEvent",
    "VirtualTimeLoop",
    "WallClockSleep",
    "apply_determinism_patches",
    "swarm",
]

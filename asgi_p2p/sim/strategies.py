"""Hypothesis strategies for simulated topologies and fault schedules.

Use them with ``@given`` and build a fresh :class:`~asgi_p2p.sim.Simulation`
inside the test (function-scoped fixtures do not mix with ``@given``)::

    @given(topo=topologies(), faults=...)
    def test_x(topo):
        with Simulation(seed=topo.seed) as sim:
            hosts = topo.build(sim)
            ...
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

from .nat import NAT_PRESETS
from .network import Fault, Host, Simulation

__all__ = ["LinkSpec", "NodeSpec", "Topology", "fault_schedules", "link_specs", "nat_kinds", "topologies"]

#: NAT kinds a generated node may have ("none" = public address).
NAT_KINDS = ("none", "full-cone", "restricted-cone", "port-restricted-cone", "symmetric")


@dataclass(frozen=True)
class LinkSpec:
    """Parameters of one generated link."""

    a: str
    b: str
    latency: float
    loss: float = 0.0
    jitter: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    bandwidth: float | None = None


@dataclass(frozen=True)
class NodeSpec:
    """One generated host."""

    name: str
    nat: str = "none"


@dataclass(frozen=True)
class Topology:
    """A generated network: hosts, links between them, and a seed."""

    seed: int
    nodes: tuple[NodeSpec, ...]
    links: tuple[LinkSpec, ...] = field(default_factory=tuple)

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def build(self, sim: Simulation) -> list[Host]:
        """Create the hosts and links in ``sim`` (which should have ``auto_link=False``
        if only the generated links are wanted); returns the hosts."""
        hosts = [sim.host(n.name, nat=None if n.nat == "none" else n.nat) for n in self.nodes]
        for lk in self.links:
            sim.link(
                lk.a,
                lk.b,
                latency=lk.latency,
                loss=lk.loss,
                jitter=lk.jitter,
                duplicate=lk.duplicate,
                reorder=lk.reorder,
                bandwidth=lk.bandwidth,
            )
        return hosts


def nat_kinds(allow_symmetric: bool = True) -> st.SearchStrategy[str]:
    """NAT kinds: ``none`` and the presets of :data:`~asgi_p2p.sim.nat.NAT_PRESETS`."""
    kinds = [k for k in NAT_KINDS if allow_symmetric or k != "symmetric"]
    assert all(k == "none" or k in NAT_PRESETS for k in kinds)
    return st.sampled_from(kinds)


def link_specs(
    a: str, b: str, *, max_loss: float = 0.3, max_latency: float = 0.2, faulty: bool = True
) -> st.SearchStrategy[LinkSpec]:
    """Parameters for a link between ``a`` and ``b``."""
    small = st.floats(0.0, 0.2, allow_nan=False) if faulty else st.just(0.0)
    return st.builds(
        LinkSpec,
        a=st.just(a),
        b=st.just(b),
        latency=st.floats(0.0005, max_latency, allow_nan=False),
        loss=st.floats(0.0, max_loss, allow_nan=False) if faulty else st.just(0.0),
        jitter=st.floats(0.0, 0.02, allow_nan=False) if faulty else st.just(0.0),
        duplicate=small,
        reorder=small,
        bandwidth=st.one_of(st.none(), st.floats(1e5, 1e8, allow_nan=False)),
    )


@st.composite
def topologies(
    draw: st.DrawFn,
    min_nodes: int = 2,
    max_nodes: int = 8,
    *,
    nats: bool = True,
    faulty_links: bool = True,
    connected: bool = True,
) -> Topology:
    """Random topologies: hosts (maybe behind NATs) and links.

    With ``connected`` the links include a random spanning tree over the public
    attachment points, so every host can reach every other one.
    """
    n = draw(st.integers(min_nodes, max_nodes))
    names = [f"n{i}" for i in range(n)]
    kinds = [draw(nat_kinds()) if nats else "none" for _ in names]
    nodes = tuple(NodeSpec(name, kind) for name, kind in zip(names, kinds, strict=True))
    pairs: list[tuple[str, str]] = []
    if connected:
        for i in range(1, n):
            j = draw(st.integers(0, i - 1))
            pairs.append((names[j], names[i]))
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=n))
    for i, j in extra:
        if i != j and (names[i], names[j]) not in pairs and (names[j], names[i]) not in pairs:
            pairs.append((names[min(i, j)], names[max(i, j)]))
    links = tuple(draw(link_specs(a, b, faulty=faulty_links)) for a, b in pairs)
    seed = draw(st.integers(0, 2**32 - 1))
    return Topology(seed, nodes, links)


@st.composite
def fault_schedules(
    draw: st.DrawFn,
    names: list[str],
    *,
    duration: float = 30.0,
    max_faults: int = 6,
    actions: tuple[str, ...] = ("partition", "heal", "link_down", "link_up", "host_down", "host_up"),
    link_pairs: list[tuple[str, str]] | None = None,
) -> list[Fault]:
    """Random fault schedules over ``names`` within ``duration`` virtual seconds.

    Link actions use ``link_pairs`` (pairs that have links); without it they are skipped.
    Every disruptive fault is followed by its repair before ``duration`` ends, so the
    network is whole again at the end.
    """
    faults: list[Fault] = []
    count = draw(st.integers(0, max_faults))
    repair = {
        "partition": "heal",
        "link_down": "link_up",
        "host_down": "host_up",
        "crash": "restart",
        "hold": "release",
    }
    usable = [a for a in actions if a in repair and (not a.startswith("link") or link_pairs)]
    for _ in range(count):
        if not usable:
            break
        action = draw(st.sampled_from(usable))
        start = draw(st.floats(0.0, duration * 0.8, allow_nan=False))
        end = draw(st.floats(start, duration, allow_nan=False))
        if action.startswith("link") or action == "hold":
            assert link_pairs
            a, b = draw(st.sampled_from(link_pairs))
        elif action in ("host_down", "crash"):
            a, b = draw(st.sampled_from(names)), None
        else:
            a = draw(st.sampled_from(names))
            b = draw(st.sampled_from([x for x in names if x != a] or [a]))
            if a == b:
                continue
        oneway = action == "partition" and draw(st.booleans())
        faults.append(Fault(start, action, a, b, oneway))
        faults.append(Fault(end, repair[action], a, b, oneway))
    return sorted(faults, key=lambda f: f.at)

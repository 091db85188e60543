from __future__ import annotations

import pytest

from tests.harness import Harness, UdpHarness

NETWORKS = ["udp"]
try:  # the simulator provides a harness running the same scenarios in virtual time
    from asgi_p2p.sim.harness import SimHarness  # type: ignore[import-not-found,unused-ignore]

    NETWORKS.append("sim")
except ImportError:  # pragma: no cover - simulator not built
    SimHarness = None


@pytest.fixture(params=NETWORKS)
def net(request: pytest.FixtureRequest) -> Harness:
    """A network to run a behaviour scenario on: real UDP on loopback, or the simulator."""
    if request.param == "udp":
        return UdpHarness()
    assert SimHarness is not None
    return SimHarness(seed=request.config.getoption("--sim-seed", default=None) or 1)  # type: ignore[no-any-return]


@pytest.fixture
def udp() -> Harness:
    return UdpHarness()

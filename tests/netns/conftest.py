"""Fixtures for the real-NAT rig (see README.md): ``netns_rig`` and ``make_rig``.

Without root or nft these tests FAIL (they are not skipped): `make test` runs as root after
`make sysdeps` installed nftables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns.rig import Rig, missing_requirements, own_namespaces, sweep_leftovers


@pytest.fixture(scope="session")
def netns_session() -> Iterator[None]:
    """Once per session: sweep namespaces left by dead earlier runs; at the end, none of ours may remain."""
    problem = missing_requirements()
    if problem:
        pytest.fail(problem, pytrace=False)
    sweep_leftovers()
    yield
    left = own_namespaces()
    sweep_leftovers(include_own=True)
    assert not left, f"network namespaces left behind by this run: {left}"


@pytest.fixture
def make_rig(netns_session: None, tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    """Factory: ``make_rig(relay_link=Impair(...), public_subnet=...)`` -> a built Rig, closed after the test.

    Spawned processes' stderr is kept under the test's tmp_path (rig0/, rig1/, ...).
    """
    rigs: list[Rig] = []

    def make(**kw: Any) -> Rig:
        if "logdir" not in kw:
            kw["logdir"] = tmp_path / f"rig{len(rigs)}"
            kw["logdir"].mkdir()
        rig = Rig(**kw)  # on a failure halfway the constructor tears down what it built
        rigs.append(rig)
        return rig

    yield make
    errors = []
    for rig in rigs:
        try:
            rig.close()
        except Exception as exc:  # close every rig, then report
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def netns_rig(make_rig: Callable[..., Rig]) -> Rig:
    """A rig with the public net and a relay host; add homes with ``netns_rig.home(...)``."""
    return make_rig()

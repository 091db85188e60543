"""Which public address a node announces: :func:`asgi_p2p.paths.router.newest_public_address`.

The relay tells a client its public address two ways: the OBSERVED_ADDR frame (once per
change, on an unreliable DATAGRAM) and the source address in its PONGs to the client's path
probes.  The newest news wins; a stale frame must not outlive a NAT rebinding (peers
would keep punching the dead mapping and stay on the relay: the NAT reboot test in
``tests/paths/test_failover.py`` shows it end to end).
"""

from __future__ import annotations

from asgi_p2p.paths.router import newest_public_address

OLD = ("198.51.100.7", 40000)
NEW = ("198.51.100.7", 51535)
OTHER = ("203.0.113.9", 7000)


def test_nothing_known_is_none() -> None:
    assert newest_public_address(None, 0.0, []) is None


def test_the_probes_answers_stand_in_until_the_first_frame() -> None:
    assert newest_public_address(None, 0.0, [(NEW, 5.0)]) == NEW


def test_a_frame_newer_than_the_answers_wins() -> None:
    # the NAT rebound and the relay said so before our next probe was answered
    assert newest_public_address(NEW, 10.0, [(OLD, 4.0)]) == NEW


def test_answers_newer_than_a_stale_frame_win() -> None:
    # the NAT rebound, the OBSERVED_ADDR saying so was lost, the relay's PONG shows the new port
    assert newest_public_address(OLD, 1.0, [(NEW, 6.3)]) == NEW


def test_a_tie_goes_to_the_frame() -> None:
    assert newest_public_address(OLD, 6.0, [(NEW, 6.0)]) == OLD


def test_the_newest_of_several_relays_answers() -> None:
    assert newest_public_address(OLD, 1.0, [(OTHER, 3.0), (NEW, 6.0), (OLD, 2.0)]) == NEW
    assert newest_public_address(None, 0.0, [(OTHER, 7.0), (NEW, 6.0)]) == OTHER

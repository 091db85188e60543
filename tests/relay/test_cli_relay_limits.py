"""``asgi-p2p relay`` limit flags reach RelayLimits and the Directory (in process: nothing is bound)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from asgi_p2p.cli import main
from asgi_p2p.cli import relay as relay_cli
from asgi_p2p.discovery.records import Directory
from asgi_p2p.relay.proto import RelayLimits


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def fake_relay(key: object, limits: RelayLimits, config: object, args: argparse.Namespace) -> int:
        seen["limits"] = limits
        seen["args"] = args
        return 0

    monkeypatch.setattr(relay_cli, "_relay", fake_relay)
    monkeypatch.setattr(relay_cli, "configure_logging", lambda level, **options: None)
    return seen


def test_destination_limit_flags_reach_the_relay_limits(captured: dict[str, Any]) -> None:
    argv = [
        "relay",
        "--ephemeral",
        "--limit-destination-packets-per-second",
        "500",
        "--limit-destination-bytes-per-second",
        "1e6",
        "--limit-queued-bytes",
        "100000",
    ]
    assert main(argv) == 0
    limits: RelayLimits = captured["limits"]
    assert limits.destination_packets_per_second == 500 and limits.destination_packet_burst == 1000
    assert limits.destination_bytes_per_second == 1e6 and limits.destination_byte_burst == 2e6
    assert limits.max_queued_bytes == 100_000 and limits.destination_queue_bytes == 100_000


def test_destination_limit_defaults(captured: dict[str, Any]) -> None:
    assert main(["relay", "--ephemeral"]) == 0
    limits: RelayLimits = captured["limits"]
    defaults = RelayLimits()
    assert limits.destination_packets_per_second == defaults.destination_packets_per_second
    assert limits.destination_bytes_per_second == defaults.destination_bytes_per_second
    assert limits.destination_queue_bytes == defaults.destination_queue_bytes
    assert limits.max_queued_bytes == defaults.max_queued_bytes
    assert captured["args"].directory_max_per_address == Directory().max_per_address
    assert captured["args"].directory_max_ttl == 3600.0


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--limit-destination-packets-per-second", "0", "must be a positive finite number"),
        ("--limit-destination-bytes-per-second", "-5", "must be a positive finite number"),
        ("--limit-destination-bytes-per-second", "nan", "must be a positive finite number"),
        ("--limit-queued-bytes", "0", "must be positive"),
        ("--directory-max-per-address", "0", "must be positive"),
    ],
)
def test_bad_limit_flags_are_refused(
    captured: dict[str, Any], capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["relay", "--ephemeral", flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and message in err
    assert "limits" not in captured


def test_a_queue_bound_below_one_packet_is_refused_clearly(
    captured: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["relay", "--ephemeral", "--limit-queued-bytes", "100"]) == 1
    err = capsys.readouterr().err
    assert (
        "relay limits: RelayLimits.destination_queue_bytes must be a whole number of bytes in 1264..17179869184, "
        "got 100 (set by --limit-queued-bytes)"
    ) in err
    assert "limits" not in captured


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--limit-queued-bytes", str(1 << 40)],
            "RelayLimits.max_queued_bytes must be a whole number of bytes in 1264..17179869184, "
            f"got {1 << 40} (set by --limit-queued-bytes)",
        ),
        (
            ["--limit-destination-packets-per-second", "0.25"],
            "RelayLimits.destination_packet_burst must be a finite number of packets in [1, 1e+15], "
            "got 0.5 (set by --limit-destination-packets-per-second)",
        ),
        (
            ["--limit-destination-bytes-per-second", "1e15"],
            "RelayLimits.destination_byte_burst must be a finite number of bytes in [1200, 1e+15], "
            "got 2000000000000000.0 (set by --limit-destination-bytes-per-second)",
        ),
    ],
)
def test_limits_out_of_range_name_the_flag(
    captured: dict[str, Any], capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["relay", "--ephemeral", *argv]) == 1
    err = capsys.readouterr().err
    assert f"relay limits: {message}" in err
    assert "limits" not in captured

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from asgi_p2p import InvalidConfiguration, NetworkConfig
from asgi_p2p.config import CEILINGS, LIMITS, Choice
from asgi_p2p.relay.proto import RELAY_LIMITS, RelayLimits


def test_defaults() -> None:
    cfg = NetworkConfig()
    assert cfg.max_message_size == 1024 * 1024
    assert NetworkConfig.from_env({}) == cfg


def test_from_env_reads_prefixed_variables() -> None:
    cfg = NetworkConfig.from_env({"ASGI_P2P_MAX_MESSAGE_SIZE": "4096", "ASGI_P2P_CONNECT_TIMEOUT": "2.5"})
    assert cfg.max_message_size == 4096
    assert cfg.connect_timeout == 2.5


def test_overrides_beat_environment() -> None:
    cfg = NetworkConfig.from_env({"ASGI_P2P_MAX_MESSAGE_SIZE": "4096"}, max_message_size=10)
    assert cfg.max_message_size == 10


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("ASGI_P2P_MAX_MESSAGE_SIZE", "lots"),
        ("ASGI_P2P_MAX_MESSAGE_SIZE", "-1"),
        ("ASGI_P2P_CONNECT_TIMEOUT", "0"),
        ("ASGI_P2P_MAX_DATAGRAM_SIZE", "500"),
        ("ASGI_P2P_STREAM_RECEIVE_WINDOW", "20000000"),  # above its ceiling
        ("ASGI_P2P_MAX_STREAM_RECEIVE_WINDOW", "1000"),  # below the starting window
        ("ASGI_P2P_MAX_CONNECTION_RECEIVE_WINDOW", "1000"),
        ("ASGI_P2P_MAX_STREAM_SEND_BUFFER", "1000"),
        ("ASGI_P2P_MAX_STREAM_SEND_BUFFER", str((1 << 30) + 1)),  # past 1 GiB
        ("ASGI_P2P_CONNECTION_RECEIVE_WINDOW", "0"),
        ("ASGI_P2P_CONGESTION_CONTROL", "vegas"),
    ],
)
def test_invalid_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(InvalidConfiguration, match=var):
        NetworkConfig.from_env({var: value})


def test_window_ceilings_and_congestion_control_from_env() -> None:
    cfg = NetworkConfig.from_env(
        {
            "ASGI_P2P_MAX_STREAM_RECEIVE_WINDOW": "8_388_608",
            "ASGI_P2P_MAX_CONNECTION_RECEIVE_WINDOW": "12582912",
            "ASGI_P2P_MAX_STREAM_SEND_BUFFER": "262144",
            "ASGI_P2P_CONGESTION_CONTROL": " cubic ",
        }
    )
    assert cfg.max_stream_receive_window == 8 << 20
    assert cfg.max_connection_receive_window == 12 << 20
    assert cfg.max_stream_send_buffer == cfg.stream_send_buffer  # fixed-size send buffer
    assert cfg.congestion_control == "cubic"
    assert NetworkConfig.from_env({"ASGI_P2P_CONGESTION_CONTROL": "bbr"}).congestion_control == "bbr"
    defaults = NetworkConfig()
    assert defaults.congestion_control == "cubic"
    assert defaults.stream_receive_window < defaults.max_stream_receive_window <= defaults.max_connection_receive_window


def test_admission_limits_default_and_come_from_the_environment() -> None:
    cfg = NetworkConfig()
    assert (cfg.max_handshaking, cfg.max_handshaking_per_address, cfg.max_connections_per_address) == (128, 16, 128)
    assert (cfg.handshake_timeout, cfg.retry_token_lifetime) == (10.0, 10.0)
    cfg = NetworkConfig.from_env(
        {
            "ASGI_P2P_MAX_HANDSHAKING": "64",
            "ASGI_P2P_MAX_HANDSHAKING_PER_ADDRESS": "4",
            "ASGI_P2P_MAX_CONNECTIONS_PER_ADDRESS": "1_000",
            "ASGI_P2P_HANDSHAKE_TIMEOUT": "3.5",
            "ASGI_P2P_RETRY_TOKEN_LIFETIME": "2",
        }
    )
    assert (cfg.max_handshaking, cfg.max_handshaking_per_address, cfg.max_connections_per_address) == (64, 4, 1000)
    assert (cfg.handshake_timeout, cfg.retry_token_lifetime) == (3.5, 2.0)


# -- strict values: finite, in range, the setting and the variable named --------------------


@pytest.mark.parametrize(
    ("var", "value", "allowed"),
    [
        ("ASGI_P2P_IDLE_TIMEOUT", "nan", r"\(0, 86400\]"),
        ("ASGI_P2P_IDLE_TIMEOUT", "inf", r"\(0, 86400\]"),
        ("ASGI_P2P_IDLE_TIMEOUT", "1e309", r"\(0, 86400\]"),
        ("ASGI_P2P_IDLE_TIMEOUT", "-inf", r"\(0, 86400\]"),
        ("ASGI_P2P_CONNECT_TIMEOUT", "86401", r"\(0, 86400\]"),
        ("ASGI_P2P_KEEPALIVE_INTERVAL", "nan", r"0 \(off\) or a finite number of seconds in \(0, 86400\]"),
        ("ASGI_P2P_KEEPALIVE_INTERVAL", "-1", r"0 \(off\) or a finite number of seconds in \(0, 86400\]"),
        ("ASGI_P2P_CONNECTION_RECEIVE_WINDOW", "0", "1200..1073741824"),
        ("ASGI_P2P_STREAM_RECEIVE_WINDOW", "1199", "1200..1073741824"),
        ("ASGI_P2P_STREAM_SEND_BUFFER", "0", "1..1073741824"),
        ("ASGI_P2P_MAX_MESSAGE_SIZE", "4294967296", "1..4294967295"),
        ("ASGI_P2P_MAX_STREAMS", "0", "1..65536"),
        ("ASGI_P2P_MAX_CONNECTIONS", "1e3", "1..1048576"),
        ("ASGI_P2P_PUNCH_TTL", "256", "0..255"),
        ("ASGI_P2P_MAX_PROBE_DATAGRAM_SIZE", "65508", "0..65507"),
        ("ASGI_P2P_MAX_HANDSHAKING", "0", "1..1048576"),
        ("ASGI_P2P_MAX_HANDSHAKING", "-5", "1..1048576"),
        ("ASGI_P2P_MAX_HANDSHAKING", "1.5", "1..1048576"),
        ("ASGI_P2P_MAX_HANDSHAKING_PER_ADDRESS", "0", "1..1048576"),
        ("ASGI_P2P_MAX_CONNECTIONS_PER_ADDRESS", "0", "1..1048576"),
        ("ASGI_P2P_MAX_CONNECTIONS_PER_ADDRESS", "1048577", "1..1048576"),
        ("ASGI_P2P_HANDSHAKE_TIMEOUT", "0", r"\(0, 86400\]"),
        ("ASGI_P2P_HANDSHAKE_TIMEOUT", "nan", r"\(0, 86400\]"),
        ("ASGI_P2P_HANDSHAKE_TIMEOUT", "inf", r"\(0, 86400\]"),
        ("ASGI_P2P_RETRY_TOKEN_LIFETIME", "0", r"\(0, 86400\]"),
        ("ASGI_P2P_RETRY_TOKEN_LIFETIME", "1e309", r"\(0, 86400\]"),
        ("ASGI_P2P_MAX_STREAM_RECEIVE_WINDOW", "1073741825", "1200..1073741824"),
        ("ASGI_P2P_MAX_CONNECTION_RECEIVE_WINDOW", "1199", "1200..1073741824"),
        ("ASGI_P2P_MAX_STREAM_SEND_BUFFER", "0", "1..1073741824"),
        ("ASGI_P2P_CONGESTION_CONTROL", "Reno", "one of 'reno', 'cubic'"),
    ],
)
def test_out_of_range_env_values_name_variable_setting_and_range(var: str, value: str, allowed: str) -> None:
    with pytest.raises(InvalidConfiguration, match=allowed) as info:
        NetworkConfig.from_env({var: value})
    message = str(info.value)
    assert message.startswith(f"{var}={value!r}")
    setting = var.removeprefix("ASGI_P2P_").lower()
    assert setting in message and info.value.setting == setting


@pytest.mark.parametrize("name", [f.name for f in fields(NetworkConfig)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), -1, True, "5", None])
def test_every_field_refuses_non_finite_negative_and_wrong_types(name: str, bad: object) -> None:
    with pytest.raises(InvalidConfiguration, match=name) as info:
        NetworkConfig(**{name: bad})  # type: ignore[arg-type]
    assert info.value.setting == name
    assert LIMITS[name].describe() in str(info.value)


@pytest.mark.parametrize("name", [f.name for f in fields(NetworkConfig)])
def test_every_field_accepts_both_ends_of_its_range(name: str) -> None:
    limit = LIMITS[name]
    if isinstance(limit, Choice):
        for choice in limit.values:
            assert getattr(NetworkConfig(**{name: choice}), name) == choice  # type: ignore[arg-type]
        with pytest.raises(InvalidConfiguration, match=name):
            NetworkConfig(**{name: limit.values[0].upper()})  # type: ignore[arg-type]
        return
    lows = [0] if limit.zero_is_off else []
    low = limit.low if not limit.open_low else limit.low + 0.001
    lows.append(int(low) if limit.integer else low)
    others: dict[str, object] = {}
    if name == "max_datagram_size":  # the receive windows must carry one packet of this size
        others = {"stream_receive_window": 65507, "connection_receive_window": 65507}
    if name in CEILINGS:  # a starting size may reach the top of its range with its ceiling
        others = {CEILINGS[name]: int(limit.high)}
    starts = {ceiling: start for start, ceiling in CEILINGS.items()}
    if name in starts:  # a ceiling may go down to the bottom of its range with its start
        others = {starts[name]: int(limit.low)}
    for value in [*lows, int(limit.high) if limit.integer else limit.high]:
        cfg = NetworkConfig(**{name: value, **others})  # type: ignore[arg-type]
        assert getattr(cfg, name) == value
    above = int(limit.high) + 1 if limit.integer else limit.high * 1.01
    with pytest.raises(InvalidConfiguration, match=name):
        NetworkConfig(**{name: above, **others})  # type: ignore[arg-type]


def test_float_fields_take_whole_numbers_int_fields_refuse_fractions() -> None:
    assert NetworkConfig(idle_timeout=5).idle_timeout == 5
    with pytest.raises(InvalidConfiguration, match="max_streams must be a whole number"):
        NetworkConfig(max_streams=1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidConfiguration, match=r"ASGI_P2P_MAX_STREAMS='1.5' is not a valid int"):
        NetworkConfig.from_env({"ASGI_P2P_MAX_STREAMS": "1.5"})


def test_receive_windows_must_carry_one_packet() -> None:
    with pytest.raises(InvalidConfiguration, match=r"stream_receive_window must be at least max_datagram_size \(2000"):
        NetworkConfig(max_datagram_size=2000, stream_receive_window=1500)
    with pytest.raises(
        InvalidConfiguration, match="ASGI_P2P_CONNECTION_RECEIVE_WINDOW='1400': connection_receive_window must be"
    ):
        NetworkConfig.from_env({"ASGI_P2P_CONNECTION_RECEIVE_WINDOW": "1400", "ASGI_P2P_MAX_DATAGRAM_SIZE": "1452"})
    # the setting given in code is named without a variable
    with pytest.raises(InvalidConfiguration, match=r"^stream_receive_window must be at least") as info:
        NetworkConfig.from_env({"ASGI_P2P_MAX_DATAGRAM_SIZE": "1452"}, stream_receive_window=1300)
    assert "ASGI_P2P" not in str(info.value)
    assert NetworkConfig(max_datagram_size=1452, stream_receive_window=1452).stream_receive_window == 1452


def test_a_bad_override_is_not_blamed_on_the_environment() -> None:
    with pytest.raises(InvalidConfiguration, match=r"^idle_timeout must be") as info:
        NetworkConfig.from_env({"ASGI_P2P_IDLE_TIMEOUT": "5"}, idle_timeout=float("nan"))
    assert "ASGI_P2P" not in str(info.value)


def test_docs_table_lists_every_field_with_its_range() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in doc.splitlines() if line.startswith("| `")}
    for f in fields(NetworkConfig):
        row = rows.get(f.name)
        assert row is not None, f"docs/configuration.md has no row for {f.name}"
        assert f"`ASGI_P2P_{f.name.upper()}`" in row
        assert f"| {f.default} |" in row, f"{f.name}: default {f.default} not in {row!r}"
        assert f"| {LIMITS[f.name].range_text()} |" in row, f"{f.name}: range not in {row!r}"


@pytest.mark.parametrize("name", [f.name for f in fields(RelayLimits)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1, 0, True])
def test_relay_limits_refuse_non_finite_and_out_of_range_values(name: str, bad: object) -> None:
    with pytest.raises(InvalidConfiguration, match=f"RelayLimits.{name} must be") as info:
        RelayLimits(**{name: bad})  # type: ignore[arg-type]
    assert RELAY_LIMITS[name].describe() in str(info.value)
    assert isinstance(info.value, ValueError)  # what callers caught before


def test_relay_limits_byte_burst_carries_a_full_packet() -> None:
    with pytest.raises(InvalidConfiguration, match=r"RelayLimits.byte_burst must be at least max_datagram_size \(1452"):
        RelayLimits(max_datagram_size=1452, byte_burst=1300)
    assert RelayLimits(max_datagram_size=1452, byte_burst=1452).byte_burst == 1452
    assert RelayLimits(max_clients=1_000_000).max_clients == 1_000_000
    with pytest.raises(InvalidConfiguration, match=r"RelayLimits.max_clients"):
        RelayLimits(max_clients=1_000_001)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e309", "0", "-2"])
def test_cli_number_flags_refuse_non_finite_values(text: str) -> None:
    import argparse

    from asgi_p2p.cli._common import positive_float

    with pytest.raises(argparse.ArgumentTypeError, match="must be a positive finite number"):
        positive_float(text)
    assert positive_float("2.5") == 2.5


def test_window_ceilings_are_never_below_their_starting_sizes() -> None:
    # the setting that moved is blamed (and its variable named); both moved: the ceiling
    with pytest.raises(
        InvalidConfiguration,
        match=r"^ASGI_P2P_STREAM_RECEIVE_WINDOW='20000000': stream_receive_window must be at most "
        r"max_stream_receive_window \(16777216 bytes\)",
    ) as info:
        NetworkConfig.from_env({"ASGI_P2P_STREAM_RECEIVE_WINDOW": "20000000"})
    assert info.value.setting == "stream_receive_window"
    with pytest.raises(
        InvalidConfiguration,
        match=r"^ASGI_P2P_MAX_CONNECTION_RECEIVE_WINDOW='1000000': max_connection_receive_window must be at least "
        r"connection_receive_window \(4194304 bytes\).*got 1000000$",
    ) as info:
        NetworkConfig.from_env({"ASGI_P2P_MAX_CONNECTION_RECEIVE_WINDOW": "1000000"})
    assert info.value.setting == "max_connection_receive_window"
    with pytest.raises(InvalidConfiguration, match=r"^max_stream_send_buffer must be at least stream_send_buffer"):
        NetworkConfig(stream_send_buffer=1 << 20, max_stream_send_buffer=1 << 19)
    # equal: a fixed size (no auto-tuning)
    cfg = NetworkConfig(stream_receive_window=1 << 20, max_stream_receive_window=1 << 20)
    assert cfg.stream_receive_window == cfg.max_stream_receive_window


def test_congestion_control_names_the_allowed_controllers() -> None:
    with pytest.raises(
        InvalidConfiguration,
        match=r"^ASGI_P2P_CONGESTION_CONTROL='vegas': congestion_control must be one of 'reno', 'cubic', 'bbr', "
        r"got 'vegas'$",
    ) as info:
        NetworkConfig.from_env({"ASGI_P2P_CONGESTION_CONTROL": "vegas"})
    assert info.value.setting == "congestion_control"
    with pytest.raises(InvalidConfiguration, match=r"congestion_control must be one of .*got 5 \(int\)"):
        NetworkConfig(congestion_control=5)  # type: ignore[arg-type]

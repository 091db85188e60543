from __future__ import annotations

import pytest

from asgi_p2p import InvalidConfiguration, NetworkConfig


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
        ("ASGI_P2P_CONGESTION_CONTROL", "bbr"),
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
    defaults = NetworkConfig()
    assert defaults.congestion_control == "reno"
    assert defaults.stream_receive_window < defaults.max_stream_receive_window <= defaults.max_connection_receive_window

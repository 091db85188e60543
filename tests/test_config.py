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
    ],
)
def test_invalid_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(InvalidConfiguration, match=var):
        NetworkConfig.from_env({var: value})

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


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("ASGI_P2P_MAX_HANDSHAKING", "0"),
        ("ASGI_P2P_MAX_HANDSHAKING", "-5"),
        ("ASGI_P2P_MAX_HANDSHAKING", "1.5"),
        ("ASGI_P2P_MAX_HANDSHAKING_PER_ADDRESS", "0"),
        ("ASGI_P2P_MAX_CONNECTIONS_PER_ADDRESS", "0"),
        ("ASGI_P2P_HANDSHAKE_TIMEOUT", "0"),
        ("ASGI_P2P_HANDSHAKE_TIMEOUT", "nan"),
        ("ASGI_P2P_HANDSHAKE_TIMEOUT", "inf"),
        ("ASGI_P2P_RETRY_TOKEN_LIFETIME", "0"),
        ("ASGI_P2P_RETRY_TOKEN_LIFETIME", "1e309"),
    ],
)
def test_invalid_admission_limits_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(InvalidConfiguration, match=var):
        NetworkConfig.from_env({var: value})

"""Hostile QUIC Initial packets for flood tests and the flood benchmark.

* :func:`junk_initial`: a well-formed 1,200-byte Initial long header around random
  bytes (what a flood costs nothing to make): it never decrypts.
* :class:`ClientHellos`: genuine client Initials (a real aioquic ClientHello), each
  with its own destination connection id and so its own Initial keys; made from one
  handshake by re-encrypting, so a thousand cost milliseconds, not seconds.
* :func:`padding_initial`: an Initial that decrypts but carries only PADDING (no CRYPTO
  frame): QUIC closes such a connection at once.
"""

from __future__ import annotations

import random

from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import pull_quic_header

ALPN = "asgi-p2p/msg/1"


def junk_initial(rng: random.Random, size: int = 1200) -> bytes:
    """A QUIC v1 Initial header (random 8-byte connection ids, no token) and random bytes."""
    dcid, scid = rng.randbytes(8), rng.randbytes(8)
    head = bytes([0xC3]) + (1).to_bytes(4, "big") + bytes([8]) + dcid + bytes([8]) + scid + b"\x00"
    length = size - len(head) - 2
    return head + (0x4000 | length).to_bytes(2, "big") + rng.randbytes(length)


def client(alpn: str = ALPN, token: bytes = b"") -> QuicConnection:
    """An aioquic client that can start a handshake (it need not finish one)."""
    return QuicConnection(
        configuration=QuicConfiguration(
            is_client=True,
            alpn_protocols=[alpn],
            verify_mode=0,
            server_name="flood",
            connection_id_length=8,
            token=token,
        )
    )


def first_datagram(quic: QuicConnection, addr: tuple[str, int], now: float = 0.0) -> bytes:
    quic.connect(addr, now=now)
    return quic.datagrams_to_send(now)[0][0]


class ClientHellos:
    """Genuine ClientHello Initials, one per call, each with a fresh destination connection id."""

    def __init__(self, rng: random.Random, alpn: str = ALPN) -> None:
        self.rng = rng
        datagram = first_datagram(client(alpn), ("192.0.2.1", 4433))
        buf = Buffer(data=datagram)
        header = pull_quic_header(buf, host_cid_length=8)
        assert header.version is not None
        self._version = header.version
        self._offset = buf.tell()
        self._dcid_at = datagram.index(header.destination_cid)
        crypto = CryptoPair()
        crypto.setup_initial(header.destination_cid, is_client=False, version=header.version)
        plain_header, self._payload, self._pn = crypto.decrypt_packet(datagram[: header.packet_length], self._offset, 0)
        self._plain_header = plain_header
        self._padding = datagram[header.packet_length :]

    def __call__(self) -> bytes:
        dcid = self.rng.randbytes(8)
        at = self._dcid_at
        plain_header = self._plain_header[:at] + dcid + self._plain_header[at + 8 :]
        crypto = CryptoPair()
        crypto.setup_initial(dcid, is_client=True, version=self._version)
        return crypto.encrypt_packet(plain_header, self._payload, self._pn) + self._padding


def padding_initial(rng: random.Random) -> bytes:
    """An Initial that decrypts (right keys) but holds only PADDING frames, padded to 1,200 bytes."""
    hellos = ClientHellos(rng)
    payload = bytes(len(hellos._payload))  # all PADDING (frame type 0)
    dcid = rng.randbytes(8)
    at = hellos._dcid_at
    plain_header = hellos._plain_header[:at] + dcid + hellos._plain_header[at + 8 :]
    crypto = CryptoPair()
    crypto.setup_initial(dcid, is_client=True, version=hellos._version)
    return crypto.encrypt_packet(plain_header, payload, hellos._pn) + hellos._padding

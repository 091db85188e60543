"""The binary address codec shared by disco messages, relay frames and node records."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from asgi_p2p.net.addr import decode_address, encode_address
from asgi_p2p.net.base import Address

ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
addresses = st.tuples(ips, st.integers(0, 65535))


@given(addresses)
def test_address_codec(addr: Address) -> None:
    out = bytearray()
    encode_address(out, addr)
    assert decode_address(bytes(out)) == addr

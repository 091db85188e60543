"""DnsDiscovery without a DNS server: TXT encoding, server and TSIG option parsing, nothing published by default."""

from __future__ import annotations

import asyncio

import pytest

from asgi_p2p.discovery.dns import TXT_PREFIX, DnsDiscovery, DnsUpdate, decode_txt, encode_txt, parse_server
from asgi_p2p.discovery.records import MAX_ADDRS, InvalidRecord, NodeRecord
from asgi_p2p.errors import InvalidConfiguration
from asgi_p2p.identity import NodeAddr, SecretKey

KEY = SecretKey.from_seed("dns-unit")
SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ="


def test_txt_round_trip_splits_into_255_byte_strings() -> None:
    addrs = tuple((f"2001:db8::{i:x}", 4433) for i in range(MAX_ADDRS))
    signed = NodeRecord(KEY.node_id, 7, 1e9, "p2p-relay://" + "r" * 1000, addrs, "music.example.org").sign(KEY)
    strings = encode_txt(signed)
    assert len(strings) > 1 and all(len(s) <= 255 for s in strings)
    assert strings[0].startswith(TXT_PREFIX.encode())
    assert decode_txt(strings) == signed


@pytest.mark.parametrize(
    ("strings", "message"),
    [
        ([b"v=spf1 -all"], "does not start with"),
        ([TXT_PREFIX.encode() + b"!!!"], "not valid base64"),
        ([TXT_PREFIX.encode() + b"UDJQUg=="], "node record"),
    ],
)
def test_foreign_or_damaged_txt_is_refused(strings: list[bytes], message: str) -> None:
    with pytest.raises(InvalidRecord, match=message):
        decode_txt(strings)


def test_server_and_tsig_options() -> None:
    assert parse_server("127.0.0.1") == ("127.0.0.1", 53)
    assert parse_server("192.0.2.1:5353") == ("192.0.2.1", 5353)
    assert parse_server("[2001:db8::1]:53") == ("2001:db8::1", 53)
    assert parse_server("2001:db8::1") == ("2001:db8::1", 53)
    for bad in ("ns.example.org", "127.0.0.1:0", "127.0.0.1:x", "[::1]x"):
        with pytest.raises(InvalidConfiguration, match="DNS server"):
            parse_server(bad)
    u = DnsUpdate.parse_key("127.0.0.1", f"hmac-sha512:update-key:{SECRET}")
    assert (u.algorithm, u.key_name, u.secret) == ("hmac-sha512", "update-key", SECRET)
    assert DnsUpdate.parse_key("127.0.0.1", f"k:{SECRET}").algorithm == "hmac-sha256"
    with pytest.raises(InvalidConfiguration, match="not supported"):
        DnsUpdate("127.0.0.1", "k", SECRET, "hmac-md4")
    with pytest.raises(InvalidConfiguration, match="TSIG key"):
        DnsUpdate("127.0.0.1", "k", "not base64!")
    with pytest.raises(InvalidConfiguration, match="expected"):
        DnsUpdate.parse_key("127.0.0.1", "just-a-name")
    with pytest.raises(InvalidConfiguration, match="needs the node's key"):
        DnsDiscovery("p2p.test", update=u)


def test_nothing_is_published_without_an_update_server() -> None:
    async def main() -> None:
        d = DnsDiscovery("p2p.test", key=KEY, nameservers=["192.0.2.1"])  # never contacted
        await d.publish(NodeAddr(KEY.node_id, [("192.0.2.7", 1)]))
        await d.unpublish()
        assert d.record is None
        assert d.qname(KEY.node_id).to_text() == f"{KEY.node_id}.p2p.test."

    asyncio.run(main())

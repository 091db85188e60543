"""Issue 14: a home whose router drops all outbound UDP (nftables) reaches a peer through the
relay over TCP (TLS + WebSocket), downloads a track with its sha256 intact, and when UDP is
unblocked the same connection moves to UDP (relay, then direct) without the app noticing.
`asgi-p2p get --key-file` remembers the network: its second run on the blocked network dials the
relay over TCP at once (no UDP head start), and once UDP is unblocked a run moves back to UDP.

Real processes in network namespaces (see README.md): `asgi-p2p relay --tcp-port` on the public
host, `asgi-p2p apps.music:app --relay URL` in home A, and in home B (UDP blocked at its router)
a client script holding one HTTP/3 connection across the switch.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from asgi_p2p import SecretKey
from tests.cli.conftest import cli_env
from tests.netns.rig import Impair, Rig, expect_line, sh
from tests.netns.test_nat_traversal import RELAY_PORT, SERVE_PORT, _music_dir

TCP_PORT = 443

#: home B's router: drop every UDP packet its LAN sends out (an office or hotel network)
BLOCK_UDP = """table inet udpblock {
    chain forward {
        type filter hook forward priority filter - 10; policy accept;
        iifname "lan" meta l4proto udp counter drop
    }
}
"""


def test_a_home_that_blocks_udp_reaches_a_peer_over_the_tcp_relay_and_moves_to_udp(
    make_rig: Callable[..., Rig], tmp_path: Path
) -> None:
    rig = make_rig()
    a = rig.home("a", nat="eim", wan=Impair(delay_ms=10))
    b = rig.home("b", nat="eim", wan=Impair(delay_ms=15))
    assert b.router is not None
    rig.nft(b.router.ns, BLOCK_UDP)
    (tmp_path / "home").mkdir()
    music_dir, track, sha = _music_dir(tmp_path)
    env = cli_env(tmp_path / "home", MUSIC_DIR=str(music_dir))
    url_file, ticket_file = tmp_path / "relay.url", tmp_path / "ticket"
    relay = rig.python(
        rig.relay,
        *("-m", "asgi_p2p", "relay", "--ephemeral", "--host", "0.0.0.0", "--public-host", rig.relay.ip),
        *("--port", str(RELAY_PORT), "--tcp-port", str(TCP_PORT), "--url-file", str(url_file)),
        env=env,
    )
    url = rig.wait_file(url_file, relay, timeout=60)
    assert url.endswith(f"?tcp={TCP_PORT}")
    server = rig.python(
        a.host,
        *("-m", "asgi_p2p", "apps.music:app", "--ephemeral", "--host", "0.0.0.0", "--port", str(SERVE_PORT)),
        *("--relay", url, "--ticket-file", str(ticket_file)),
        env=env,
    )
    ticket = rig.wait_file(ticket_file, server, timeout=60)
    client = rig.python(b.host, "-m", "tests.netns.relay_tcp_client", url, ticket, f"/tracks/{track}/audio", env=env)
    key_file = tmp_path / "get.key"
    SecretKey.generate().save(key_file)
    memory = tmp_path / "home" / ".cache" / "asgi-p2p" / "networks" / f"{SecretKey.load(key_file).node_id}.json"

    def get(what: str) -> str:
        """`asgi-p2p get --key-file` in home B through the relay; its log (info level)."""
        argv = [sys.executable, "-m", "asgi_p2p", "get", "--key-file", str(key_file), "--log-level", "info"]
        got = rig.run(b.host, [*argv, "--relay", url, "--timeout", "30", f"{ticket}/tracks"], env=env, timeout=90)
        assert got.returncode == 0 and track in got.stdout, f"{what}:\n{got.stderr}\n{logs()}"
        return str(got.stderr)

    def logs() -> str:
        return f"client log:\n{rig.log(client)}\nserver log:\n{rig.log(server)}\nrelay log:\n{rig.log(relay)}"

    try:
        got1 = expect_line(client, r"^got1 (\S+) (\S+) (\S+)$", timeout=90)
        assert got1.groups() == (sha, "relay", "tcp"), logs()
        listing = sh(["ip", "netns", "exec", b.router.ns, "nft", "list", "table", "inet", "udpblock"])
        dropped = re.search(r"counter packets (\d+)", listing)
        assert dropped is not None and int(dropped.group(1)) > 0, listing  # the client did try UDP

        # a fresh `get` learns that this network blocks UDP to the relay, and keeps it (0600) ...
        first = get("first get on the blocked network")
        assert "connected over TCP" in first and "connecting over TCP at once" not in first, first
        assert "remembered that this network (from 10.2.0.2 to relay" in first, first
        assert memory.stat().st_mode & 0o777 == 0o600
        assert len(json.loads(memory.read_text())["udp_blocked"]) == 1
        # ... so the next one dials TCP at once, with no UDP head start
        second = get("second get on the blocked network")
        assert "UDP did not work on this network (from 10.2.0.2 to relay" in second, second
        assert "connecting over TCP at once" in second and "connected over TCP" in second, second
        rig.nft(b.router.ns, "delete table inet udpblock\n")  # UDP works again
        assert client.stdin is not None
        client.stdin.write("unblocked\n")
        client.stdin.flush()
        moved = expect_line(client, r"^moved (\S+) (\S+)$", timeout=90)
        assert moved.groups() == ("udp", "direct"), logs()
        got2 = expect_line(client, r"^got2 (\S+) (\S+)$", timeout=90)
        assert got2.groups() == (sha, "yes"), logs()
        # UDP works again: `get` starts TCP at once as remembered, but UDP comes up too and is used
        third = get("get after unblocking")
        assert "connecting over TCP at once" in third, third
        assert "carries UDP to the relay again" in third, third
        assert json.loads(memory.read_text())["udp_blocked"] == {}
    finally:
        print(logs())

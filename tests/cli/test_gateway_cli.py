"""``asgi-p2p gateway`` as a real process in front of ``asgi-p2p serve`` processes (127.0.0.1 only)."""

from __future__ import annotations

import argparse
import io
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from asgi_p2p.cli import gateway as gateway_cli
from asgi_p2p.gateway.gateway import Routing
from asgi_p2p.identity import SecretKey
from asgi_p2p.ticket import Ticket
from tests.cli.conftest import Cli, Starter, one_line_error
from tests.gateway.browser import gateway_process

pytestmark = pytest.mark.timeout(120)


async def test_a_ticket_routes_every_request_to_that_node(start_server: Starter, tmp_path: Path) -> None:
    ticket = start_server("apps.music:app", "--ephemeral").wait_ready()
    node_id = Ticket.parse(ticket).node_id
    other = SecretKey.generate().node_id
    async with gateway_process(tmp_path, "--listen", "127.0.0.1:0", "--limit-concurrency", "50", ticket) as url:
        assert url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            tracks = (await client.get("/tracks")).json()
            assert len(tracks) == 4
            # whatever the Host header says, the request goes to the ticket's node
            r = await client.get("/tracks", headers={"host": f"{other}.localhost"})
            assert r.status_code == 200 and r.json() == tracks
            audio = await client.get(tracks[0]["audio_url"], headers={"range": "bytes=0-9"})
            assert audio.status_code == 206 and len(audio.content) == 10
    stdout = (tmp_path / "gateway-0" / "stdout.txt").read_text()
    assert f"every request goes to node {node_id}" in stdout and "gateway node id" in stdout


async def test_the_peers_allow_list_applies_to_the_gateways_key(
    cli: Cli, start_server: Starter, tmp_path: Path
) -> None:
    key_file = tmp_path / "gateway.key"
    gateway_key = SecretKey.generate()
    gateway_key.save(key_file)
    allowed = start_server("apps.music:app", "--ephemeral", "--allow", str(gateway_key.node_id)).wait_ready()
    refusing = start_server("apps.music:app", "--ephemeral", "--allow", str(SecretKey.generate().node_id))
    async with gateway_process(tmp_path, "--listen", "127.0.0.1:0", "--key-file", str(key_file), allowed) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            assert (await client.get("/")).json()["you"] == str(gateway_key.node_id)
    async with gateway_process(tmp_path, "--listen", "127.0.0.1:0", refusing.wait_ready()) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            r = await client.get("/")
            assert r.status_code == 502 and "not allowed" in r.text


async def test_tls_path_and_host_style_through_a_directory(tmp_path: Path) -> None:
    """`--tls-cert/--tls-key --host-suffix --path-style --directory`: the public gateway's routing, on loopback."""
    import asyncio
    import ssl
    import time

    from apps.music import create_app
    from asgi_p2p import Node
    from asgi_p2p.discovery import DirectoryClient, DirectoryServer
    from tests.gateway.conftest import peer, self_signed

    cert, key = self_signed(tmp_path)
    directory = await Node.bind()
    clock = time.time() - asyncio.get_running_loop().time()
    DirectoryServer(clock_offset=clock).attach(directory)
    try:
        async with peer(create_app()) as music:
            client = DirectoryClient(music.node, directory.node_addr(), clock_offset=clock)
            await client.publish(music.node.node_addr(), "music.test")
            await client.close()
            args = ["--listen", "127.0.0.1:0", "--bind", "127.0.0.1", "--tls-cert", str(cert), "--tls-key", str(key)]
            args += ["--host-suffix", "gw.example", "--path-style"]
            args += ["--directory", Ticket.from_node_addr(directory.node_addr()).encode()]
            async with gateway_process(tmp_path, *args) as url:
                assert url.startswith("https://127.0.0.1:")
                ctx = ssl.create_default_context(cafile=str(cert))
                ctx.check_hostname = False
                async with httpx.AsyncClient(base_url=url, verify=ctx, timeout=30) as http:
                    by_path = await http.get(f"/{music.node_id}/tracks", headers={"host": "gw.example"})
                    assert by_path.status_code == 200 and len(by_path.json()) == 4
                    by_host = await http.get("/tracks", headers={"host": f"{music.node_id}.gw.example"})
                    assert by_host.json() == by_path.json()
                    by_name = await http.get("/tracks", headers={"host": "music.test.gw.example"})
                    assert by_name.json() == by_path.json()
                    nobody = await http.get("/", headers={"host": "nobody.test.gw.example"})
                    assert nobody.status_code == 502 and "no such name" in nobody.text
    finally:
        await directory.close()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", "0.0.0.0:0"], "add --public"),
        (["--listen", "nonsense"], "expected HOST:PORT"),
        (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "missing.pem", "--tls-key", "missing.key"], "no such file"),
        (["--only", "not-a-node-id"], "--only:"),
        (["--host-suffix", "Bad_Suffix"], "invalid host suffix"),
        (["{ticket}", "--path-style"], "a TICKET routes everything"),
        (["p2p1broken"], "p2p1broken"),
        (["--mdns-interface", "127.0.0.1"], "--mdns-interface needs --mdns"),
        (["--connect-timeout", "0"], "must be a positive"),
    ],
)
def test_bad_arguments_are_one_line_errors(cli: Cli, argv: list[str], message: str) -> None:
    ticket = Ticket(SecretKey.generate().node_id, None, [("127.0.0.1", 9)]).encode()
    r = cli.run("gateway", "--ephemeral", *(a.format(ticket=ticket) for a in argv), timeout=30)
    assert r.returncode in (1, 2), r.stderr
    text = r.stderr.decode()
    if r.returncode == 2:  # argparse
        assert message in text
    else:
        assert message in one_line_error(r.stderr)


def test_a_public_listen_says_who_can_now_reach_the_peer() -> None:
    gateway_id = SecretKey.generate().node_id
    target = Ticket(SecretKey.generate().node_id, None, [("192.0.2.1", 9)]).to_node_addr()
    server = SimpleNamespace(url="https://192.0.2.10:8443", tls=True, port=8443)
    args = argparse.Namespace(listen=("192.0.2.10", 8443))
    out = io.StringIO()
    with redirect_stdout(out):
        gateway_cli.announce(args, server, gateway_id, Routing(target=target))
    text = out.getvalue()
    assert f"PUBLIC: anyone who can reach 192.0.2.10:8443 can now call node {target.node_id}" in text
    assert str(gateway_id) in text

    out = io.StringIO()
    with redirect_stdout(out):
        gateway_cli.announce(args, server, gateway_id, Routing(path_style=True, host_suffixes=("gw.example",)))
    text = out.getvalue()
    assert "https://<node-id>.gw.example:8443/" in text and "https://192.0.2.10:8443/<node-id>/" in text
    assert "whose --allow list names this gateway (nodes open to anyone are refused)" in text

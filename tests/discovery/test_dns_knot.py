"""DNS as the directory, against a real authoritative server: Knot DNS from Debian.

knotd runs inside a network namespace this test creates (loopback only; it never
listens on the host), with a temporary zone, configuration and TSIG key.  Inside
the namespace, a node publishes its signed record by RFC 2136 update with TSIG,
and another node finds it only through DNS (by node id and by a CNAME'd name)
and dials it; forged, expired and misplaced records are refused.  Needs root and
knotd (``make sysdeps``); without them the test fails saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from asgi_p2p.discovery import Discovery, DnsDiscovery
from asgi_p2p.identity import SecretKey
from asgi_p2p.sim.discovery import MockDNS
from tests.discovery.knot import KnotUnavailable, knot_in_netns

REPO = Path(__file__).resolve().parents[2]
PEER = Path(__file__).with_name("dns_peer.py")
ZONE = "p2p.test"


@pytest.fixture
def knot(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(namespace, server, TSIG secret): knotd serving ZONE on 127.0.0.1:53 inside a fresh namespace."""
    try:
        with knot_in_netns(tmp_path, ZONE) as server:
            yield server.netns, server.address, server.secret
    except KnotUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


def test_a_node_found_only_by_dns_is_dialled_and_bad_records_are_refused(knot: tuple[str, str, str]) -> None:
    ns, server, secret = knot
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, str(PEER), ZONE, server, "update-key", secret],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    print(json.dumps(out, indent=1))  # shown with -s: the refusal reasons and the time to first response
    a = SecretKey.from_seed("dns-server-node").node_id
    assert out["published"] == str(a)
    assert out["by_id"] == [200, "found by DNS: /by-id"]
    assert out["by_name"] == [200, "found by DNS: /by-name"]
    refused = out["refused"]
    assert "bad signature" in refused["other_key"], refused
    assert "expired" in refused["expired"], refused
    mallory = SecretKey.from_seed("dns-mallory").node_id
    v3 = SecretKey.from_seed("dns-victim-2").node_id
    assert f"record is for node {mallory}, expected {v3}" in refused["other_node"], refused
    assert out["big"] == [32, 1512]  # larger than a UDP answer: dnspython retried over TCP
    assert out["chain"]["node"] == str(a) and out["chain"]["seconds"] < 4
    assert "did not answer" in out["slow"] and "within 1 s" in out["slow"]
    assert out["cached"] == str(a)  # cached for the TTL: no second query needed
    assert "NXDOMAIN" in out["after_unpublish"] or "no TXT record" in out["after_unpublish"]
    # ordinary DNS tools see nothing of ours now, and the zone is still served
    dig = subprocess.run(
        ["ip", "netns", "exec", ns, "kdig", "+short", "@127.0.0.1", f"{a}.{ZONE}", "TXT"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert dig.returncode == 0 and dig.stdout.strip() == ""


def test_dns_and_the_simulators_mock_dns_are_discovery_sources() -> None:
    assert isinstance(DnsDiscovery(ZONE), Discovery)
    assert isinstance(MockDNS(0.0), Discovery)
    assert isinstance(MockDNS(0.0).client(), Discovery)


def test_serve_publishes_to_dns_and_get_finds_it_by_dns_alone(knot: tuple[str, str, str], tmp_path: Path) -> None:
    from tests.cli.conftest import cli_env

    ns, server, secret = knot
    home = tmp_path / "home"
    home.mkdir()
    env = cli_env(home, PYTHONPATH=str(REPO))
    key_file = tmp_path / "tsig.key"
    key_file.write_text(f"hmac-sha256:update-key:{secret}\n")
    ticket_file = tmp_path / "ticket"
    app_dir = REPO / "tests" / "cli" / "appdir"
    in_ns = ["ip", "netns", "exec", ns, sys.executable, "-m", "asgi_p2p"]
    with (tmp_path / "serve.err").open("wb") as err:
        serve = subprocess.Popen(
            [
                *(*in_ns, "serve", "--app-dir", str(app_dir), "sample_app:app", "--ephemeral", "--host", "127.0.0.1"),
                *("--ticket-file", str(ticket_file), "--dns-zone", ZONE, "--dns-update", server),
                *("--dns-tsig-key-file", str(key_file), "--name", "music.example"),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 30
        while not (ticket_file.exists() and ticket_file.read_text().strip()):
            assert serve.poll() is None, (tmp_path / "serve.err").read_text()
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        from asgi_p2p.ticket import Ticket

        node = Ticket.parse(ticket_file.read_text().strip()).node_id
        get = subprocess.run(
            [*in_ns, "get", "-v", "--dns-zone", ZONE, "--dns-server", server, f"https://{node}/hello"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert get.returncode == 0, get.stderr
        assert json.loads(get.stdout)["path"] == "/hello"
        assert f"* resolved node {node} to node {node}" in get.stderr
    finally:
        if serve.poll() is None:
            serve.terminate()  # the serve process this test started; it unpublishes on SIGTERM
        serve.wait(30)
    dig = subprocess.run(
        ["ip", "netns", "exec", ns, "kdig", "+short", "@127.0.0.1", f"{node}.{ZONE}", "TXT"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert dig.returncode == 0 and dig.stdout.strip() == "", "serve did not unpublish its record at shutdown"


def test_dns_benchmark_quick_run_prints_table() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "dns.py"), "--runs", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for label in ("dial by ticket (addresses known)", "DNS lookup + verify + dial (bare node id)"):
        assert any(line.startswith(f"| {label} | ") for line in run.stdout.splitlines()), run.stdout
    assert run.stdout.startswith("machine: ")

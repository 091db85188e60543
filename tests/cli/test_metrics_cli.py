"""``serve --metrics`` and ``relay --metrics`` as subprocesses: scraped over HTTP after real traffic."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import REPO, Cli, Starter, one_line_error


def metrics_url(stderr: str) -> str:
    found = re.search(r"metrics on (http://\S+)/metrics", stderr)
    assert found, f"no metrics line in the log:\n{stderr}"
    return found.group(1)


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_serve_metrics_count_gets(cli: Cli, start_server: Starter) -> None:
    server = start_server("serve", "apps.music:app", "--ephemeral", "--metrics", "127.0.0.1:0")
    ticket = server.ticket_file.read_text().strip()
    base = metrics_url(server.stderr)
    for _ in range(2):
        r = cli.run("get", f"{ticket}/tracks")
        assert r.returncode == 0, r.stderr
    assert cli.run("get", f"{ticket}/no-such-page").stdout == b'{"error":"Not Found"}'
    assert fetch(f"{base}/readyz") == (200, "ok socket bound\nok lifespan started\n")
    assert fetch(f"{base}/healthz") == (200, "ok\n")
    status, text = fetch(f"{base}/metrics")
    assert status == 200
    s = samples(text)
    assert s[("asgi_p2p_http_requests_total", frozenset({("method", "GET"), ("status", "200")}))] == 2
    assert s[("asgi_p2p_http_requests_total", frozenset({("method", "GET"), ("status", "404")}))] == 1
    assert s[("asgi_p2p_handshakes_total", frozenset({("outcome", "established")}))] == 3  # one get, one connection
    assert s[("asgi_p2p_datagrams_total", frozenset({("direction", "received"), ("path", "direct")}))] > 0
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0


def test_serve_refuses_a_public_metrics_address_unless_asked(cli: Cli) -> None:
    r = cli.run("serve", "apps.music:app", "--ephemeral", "--metrics", "0.0.0.0:9464")
    assert r.returncode != 0
    line = one_line_error(r.stderr)
    assert "--metrics: 0.0.0.0 is not a loopback address" in line and "--metrics-allow-public" in line
    r = cli.run("serve", "apps.music:app", "--ephemeral", "--metrics", "localhost")
    assert "expected HOST:PORT" in one_line_error(r.stderr)


def test_serve_peer_limit_flags_are_validated(cli: Cli) -> None:
    r = cli.run("serve", "apps.music:app", "--ephemeral", "--limit-peer-rate", "-5")
    assert r.returncode == 2 and b"--limit-peer-rate" in r.stderr


def test_relay_metrics(tmp_path: Path, cli: Cli) -> None:
    url_file = tmp_path / "url.txt"
    err_path = tmp_path / "stderr.txt"
    argv = [sys.executable, "-m", "asgi_p2p", "relay", "--ephemeral", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--url-file", str(url_file), "--metrics", "127.0.0.1:0"]
    with err_path.open("wb") as err:
        proc = subprocess.Popen(argv, cwd=REPO, env=cli.env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while not (url_file.exists() and url_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"relay not ready:\n{err_path.read_text()}")
            time.sleep(0.05)
        base = metrics_url(err_path.read_text())
        assert fetch(f"{base}/readyz") == (200, "ok socket bound\n")
        status, text = fetch(f"{base}/metrics")
        assert status == 200
        s = samples(text)
        assert s[("asgi_p2p_relay_clients", frozenset())] == 0
        assert s[("asgi_p2p_relay_forwarded_packets_total", frozenset())] == 0
        assert s[("asgi_p2p_directory_records", frozenset())] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_serve_handshake_rate_flag_refuses_a_third_client_and_counts_it(cli: Cli, start_server: Starter) -> None:
    # 0.1 handshakes a second from 127.0.0.1: one without a Retry, one after it, then refusals
    server = start_server(
        "serve", "apps.music:app", "--ephemeral", "--handshake-rate-per-address", "0.1", "--metrics", "127.0.0.1:0"
    )
    ticket = server.ticket_file.read_text().strip()
    base = metrics_url(server.stderr)
    for _ in range(2):
        r = cli.run("get", f"{ticket}/tracks")
        assert r.returncode == 0, r.stderr
    r = cli.run("get", f"{ticket}/tracks")
    assert r.returncode != 0
    assert "handshake_rate_per_address" in one_line_error(r.stderr)
    s = samples(fetch(f"{base}/metrics")[1])
    assert s[("asgi_p2p_handshake_refusals_total", frozenset({("reason", "handshake_rate_per_address")}))] == 1
    assert s[("asgi_p2p_handshake_refusals_total", frozenset({("reason", "handshake_rate_retry")}))] == 2


def test_connection_limit_flags_are_validated(cli: Cli) -> None:
    r = cli.run("serve", "apps.music:app", "--ephemeral", "--max-connections-per-node", "0")
    assert r.returncode == 2 and b"--max-connections-per-node" in r.stderr and b"1..1048576" in r.stderr
    r = cli.run("relay", "--ephemeral", "--handshake-rate-per-address", "nan")
    assert r.returncode == 2 and b"--handshake-rate-per-address" in r.stderr


def test_proxy_serves_metrics_from_the_environment(cli: Cli, start_server: Starter) -> None:
    # proxy shares serve's settings: --metrics (here ASGI_P2P_METRICS) and the per-peer limits
    server = start_server(
        "proxy",
        "http://127.0.0.1:1",  # nothing listens there: every request is answered 502
        "--ephemeral",
        "--limit-peer-concurrency",
        "4",
        env={"ASGI_P2P_METRICS": "127.0.0.1:0"},
    )
    ticket = server.ticket_file.read_text().strip()
    base = metrics_url(server.stderr)
    r = cli.run("get", f"{ticket}/page")
    assert r.returncode == 0 and r.stdout.startswith(b"Bad Gateway: cannot connect to the backend"), r
    status, text = fetch(f"{base}/metrics")
    assert status == 200
    s = samples(text)
    assert s[("asgi_p2p_http_requests_total", frozenset({("method", "GET"), ("status", "502")}))] == 1
    assert fetch(f"{base}/healthz") == (200, "ok\n")
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0

"""Issue 5 end to end: two homes behind real Linux NAT, a public relay, the real CLI.

A public host runs `asgi-p2p relay`; `asgi-p2p apps.music:app --relay URL` serves from home
A; `asgi-p2p get -v --relay URL --wait-direct S TICKET/tracks/<id>/audio -o FILE` fetches a
track from home B.  The connection starts through the relay (or on whichever path answers
first) and the paths layer punches a hole where the NATs allow one.  Each case checks the
bytes (sha256 against the file the music app serves) and the path `get -v` reports at the
end: `direct <A's public address>` where mapping is endpoint-independent on both sides,
`relay` where a symmetric NAT is involved.  See README.md for the NAT modes.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.conftest import cli_env
from tests.netns.rig import Impair, Rig

RELAY_PORT = 3340
SERVE_PORT = 40000
#: how long `get` waits for a direct path before sending the request anyway
WAIT_DIRECT = 10.0
TRACK_BYTES = 600_000


def _music_dir(root: Path) -> tuple[Path, str, str]:
    """A library with one track of random bytes: (MUSIC_DIR, track id, sha256)."""
    album = root / "music" / "Punch"
    album.mkdir(parents=True)
    data = random.Random(5).randbytes(TRACK_BYTES)
    (album / "The Testers - Through The Wall.wav").write_bytes(data)
    # apps.music ids: slug(album) + "-" + slug(file stem)
    return root / "music", "punch-the-testers-through-the-wall", hashlib.sha256(data).hexdigest()


def _run_case(
    rig: Rig, tmp_path: Path, nat_a: str, nat_b: str, wan_a: Impair | None, wan_b: Impair | None
) -> tuple[str, str, str]:
    """Serve from home A, fetch from home B; returns (final path line, get's stderr, A's public IP)."""
    a = rig.home("a", nat=nat_a, wan=wan_a)
    b = rig.home("b", nat=nat_b, wan=wan_b)
    (tmp_path / "home").mkdir()
    music_dir, track, sha = _music_dir(tmp_path)
    env = cli_env(tmp_path / "home", MUSIC_DIR=str(music_dir))
    url_file, ticket_file, out = tmp_path / "relay.url", tmp_path / "ticket", tmp_path / "track.out"
    relay = rig.python(
        rig.relay,
        *("-m", "asgi_p2p", "relay", "--ephemeral", "--host", "0.0.0.0", "--public-host", rig.relay.ip),
        *("--port", str(RELAY_PORT), "--url-file", str(url_file)),
        env=env,
    )
    url = rig.wait_file(url_file, relay, timeout=60)
    server = rig.python(
        a.host,
        *("-m", "asgi_p2p", "apps.music:app", "--ephemeral", "--host", "0.0.0.0", "--port", str(SERVE_PORT)),
        *("--relay", url, "--ticket-file", str(ticket_file)),
        env=env,
    )
    ticket = rig.wait_file(ticket_file, server, timeout=60)
    got = rig.run(
        b.host,
        [
            *(sys.executable, "-m", "asgi_p2p", "get", "-v", "--relay", url, "--timeout", "30"),
            *("--wait-direct", str(WAIT_DIRECT), "-o", str(out), f"{ticket}/tracks/{track}/audio"),
        ],
        env=env,
        timeout=120,
    )
    logs = f"get stderr:\n{got.stderr}\nserver log:\n{rig.log(server)}\nrelay log:\n{rig.log(relay)}"
    print(logs)  # shown with -s, and by pytest when the test fails
    assert got.returncode == 0, logs
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sha, logs  # the right bytes, whatever the path
    m = re.search(r"^\* done after [0-9.]+ s; path at the end: (.*)$", got.stderr, re.M)
    assert m is not None, logs
    assert re.search(r"^\* path: ", got.stderr, re.M), logs  # the path as connected, and each change
    public_a = a.host.public_ip
    return m.group(1), logs, public_a


@pytest.mark.parametrize(
    ("nat_a", "nat_b"),
    [
        ("eim", "eim"),
        ("eim-fullcone", "eim"),
        ("eim", "eim-fullcone"),
        ("eim-nofilter", "eim-nofilter"),
    ],
)
def test_hole_punching_ends_on_a_direct_path(
    make_rig: Callable[..., Rig], tmp_path: Path, nat_a: str, nat_b: str
) -> None:
    rig = make_rig()
    final, logs, public_a = _run_case(rig, tmp_path, nat_a, nat_b, Impair(delay_ms=10), Impair(delay_ms=15))
    # the hole in A's router: its public address (the port is A's mapping, usually SERVE_PORT)
    assert final.startswith(f"direct {public_a}:"), f"final path {final!r}\n{logs}"


@pytest.mark.parametrize(("nat_a", "nat_b"), [("symmetric", "symmetric"), ("eim", "symmetric")])
def test_symmetric_nat_stays_on_the_relay(make_rig: Callable[..., Rig], tmp_path: Path, nat_a: str, nat_b: str) -> None:
    rig = make_rig()
    final, logs, _ = _run_case(rig, tmp_path, nat_a, nat_b, Impair(delay_ms=10), Impair(delay_ms=15))
    assert final.startswith("relay p2p-relay://"), f"final path {final!r}\n{logs}"
    assert f"no direct path within {WAIT_DIRECT:g} s" in logs


def test_hole_punching_with_delay_and_loss(make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    rig = make_rig(relay_link=Impair(delay_ms=5, loss_pct=1))
    final, logs, public_a = _run_case(
        rig, tmp_path, "eim", "eim", Impair(delay_ms=30, jitter_ms=5, loss_pct=3), Impair(delay_ms=20, loss_pct=2)
    )
    assert final.startswith(f"direct {public_a}:"), f"final path {final!r}\n{logs}"


def test_get_by_name_from_the_relays_directory(make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    """`serve --relay URL --publish --name` in one home, `get --directory URL NAME/...` in the other:
    no ticket changes hands, only the relay URL and a name."""
    rig = make_rig()
    a = rig.home("a", nat="eim", wan=Impair(delay_ms=10))
    b = rig.home("b", nat="eim", wan=Impair(delay_ms=15))
    (tmp_path / "home").mkdir()
    music_dir, track, sha = _music_dir(tmp_path)
    env = cli_env(tmp_path / "home", MUSIC_DIR=str(music_dir))
    url_file, ticket_file, out = tmp_path / "relay.url", tmp_path / "ticket", tmp_path / "track.out"
    relay = rig.python(
        rig.relay,
        *("-m", "asgi_p2p", "relay", "--ephemeral", "--host", "0.0.0.0", "--public-host", rig.relay.ip),
        *("--port", str(RELAY_PORT), "--url-file", str(url_file)),
        env=env,
    )
    url = rig.wait_file(url_file, relay, timeout=60)
    server = rig.python(
        a.host,
        *("-m", "asgi_p2p", "apps.music:app", "--ephemeral", "--host", "0.0.0.0", "--port", str(SERVE_PORT)),
        *("--relay", url, "--publish", "--name", "music.a", "--ticket-file", str(ticket_file)),
        env=env,
    )
    rig.wait_file(ticket_file, server, timeout=60)  # written after the record was published
    got = rig.run(
        b.host,
        [
            *(sys.executable, "-m", "asgi_p2p", "get", "-v", "--directory", url, "--wait-direct", str(WAIT_DIRECT)),
            *("-o", str(out), f"music.a/tracks/{track}/audio"),
        ],
        env=env,
        timeout=120,
    )
    logs = f"get stderr:\n{got.stderr}\nserver log:\n{rig.log(server)}\nrelay log:\n{rig.log(relay)}"
    print(logs)
    assert got.returncode == 0, logs
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sha, logs
    # the signed record carries A's public mapping (as the relay saw it) and the relay
    assert re.search(
        rf"^\* resolved name 'music.a' to node \S+ \(.*{a.host.public_ip}:{SERVE_PORT}.*relay", got.stderr, re.M
    ), logs
    assert f"path at the end: direct {a.host.public_ip}:" in got.stderr, logs


def test_mdns_on_the_lan(make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    """`serve --mdns --name` and `get --mdns NAME/...` on one LAN (the home host's interface; the
    router does not forward multicast, so nothing leaves the home)."""
    rig = make_rig()
    a = rig.home("a", nat="eim")
    (tmp_path / "home").mkdir()
    env = cli_env(tmp_path / "home")
    lan = ("--mdns", "--mdns-interface", a.host.ip)
    args = ("apps.music:app", "--ephemeral", "--host", a.host.ip, *lan, "--name", "music.lan")
    server, _ = rig.serve(a.host, tmp_path / "ticket", *args, env=env)
    assert "announces this node" in rig.log(server)  # the warning
    got = rig.run(a.host, [sys.executable, "-m", "asgi_p2p", "get", "-v", *lan, "music.lan/tracks"], env=env)
    logs = f"get stderr:\n{got.stderr}\nserver log:\n{rig.log(server)}"
    print(logs)
    assert got.returncode == 0, logs
    assert len(json.loads(got.stdout)) == 4, logs
    assert "* resolved name 'music.lan'" in got.stderr and f"{a.host.ip}:" in got.stderr, logs
    nobody = rig.run(a.host, [sys.executable, "-m", "asgi_p2p", "get", *lan, "nobody.lan/"], env=env)
    assert nobody.returncode == 6, nobody.stderr
    assert "mdns" in nobody.stderr, nobody.stderr


def test_mdns_finds_the_server_from_another_machine_on_the_lan(make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    """The music-server case: `serve --mdns` on the home server, `get --mdns` on a phone on the same
    LAN (another namespace on the router's bridge) finds it by name and talks to it directly over
    the LAN; a host in another home, behind its own router, does not hear the announcement."""
    rig = make_rig()
    a = rig.home("a", nat="eim")
    phone = rig.lan_host("a", "phone")
    b = rig.home("b", nat="eim")
    (tmp_path / "home").mkdir()
    env = cli_env(tmp_path / "home")
    args = ("apps.music:app", "--ephemeral", "--host", a.host.ip, "--mdns", "--mdns-interface", a.host.ip)
    server, _ = rig.serve(a.host, tmp_path / "ticket", *args, "--name", "music.lan", env=env)
    got = rig.run(
        phone,
        [sys.executable, "-m", "asgi_p2p", "get", "-v", "--mdns", "--mdns-interface", phone.ip, "music.lan/tracks"],
        env=env,
    )
    logs = f"get stderr:\n{got.stderr}\nserver log:\n{rig.log(server)}"
    print(logs)
    assert got.returncode == 0, logs
    assert len(json.loads(got.stdout)) == 4, logs
    assert "* resolved name 'music.lan'" in got.stderr and f"{a.host.ip}:" in got.stderr, logs
    assert f"path at the end: direct {a.host.ip}:" in got.stderr, logs  # over the LAN, not via the WAN
    away_cmd = [sys.executable, "-m", "asgi_p2p", "get", "--mdns", "--mdns-interface", b.host.ip, "music.lan/"]
    away = rig.run(b.host, away_cmd, env=env)
    assert away.returncode == 6, away.stderr  # not resolvable from another home
    assert "mdns" in away.stderr, away.stderr

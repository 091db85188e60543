"""The real-NAT rig behaves like the internet it models, proved with plain UDP processes.

Every process runs as its own PID inside a namespace (``ip netns exec``): a reflector on the relay host
reports the address:port it sees (like STUN); hosts behind the routers send from fixed local ports.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.netns import rig as rig_module
from tests.netns.rig import Home, Impair, Rig, RigError, expect_line, list_namespaces, sh

PORTS = ("3478", "3479", "3480")


def start_reflector(rig: Rig) -> list[str]:
    """A reflector on the relay host on three ports; returns their ip:port strings."""
    proc = rig.udptool(rig.relay, "reflect", *PORTS)
    expect_line(proc, "^ready$")
    return [f"{rig.relay.ip}:{p}" for p in PORTS]


def result(proc: subprocess.Popen[Any], timeout: float = 15.0) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(expect_line(proc, r"^\{", timeout).string)
    return out


def observed(rig: Rig, home: Home, port: int, targets: list[str]) -> dict[str, str]:
    """What each target sees as the source of packets from ``home``'s host sent from local ``port``."""
    out = result(rig.udptool(home.host, "mapping", str(port), *targets))
    assert out["local"] == port
    seen: dict[str, str] = out["seen"]
    return seen


def send_line(proc: subprocess.Popen[Any], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def punch(
    rig: Rig,
    a: Home,
    b: Home,
    *,
    reflector: str | None = None,
    port: int = 41000,
    modes: tuple[str, str] = ("-", "-"),
    secs: float = 5.0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Simultaneous hole punch: each side learns its public ip:port from the reflector, then both send
    probes to the other's public ip:port for up to ``secs`` (less once both heard each other).
    Modes: "adapt" answers wherever probes come from; "ttl" first opens its own router with probes
    that expire in the core, and both go on once both did."""
    reflector = reflector or start_reflector(rig)[0]
    procs = [
        rig.udptool(h.host, "punch", str(port), reflector, str(secs), mode)
        for h, mode in zip((a, b), modes, strict=True)
    ]
    mapped = [expect_line(p, r"^mapped (\S+)$").group(1) for p in procs]
    for proc, peer in zip(procs, reversed(mapped), strict=True):
        send_line(proc, peer)
    if "ttl" in modes:
        for proc, mode in zip(procs, modes, strict=True):
            if mode == "ttl":
                expect_line(proc, "^primed$")
        for proc, mode in zip(procs, modes, strict=True):
            if mode == "ttl":
                send_line(proc, "go")
    ra, rb = (result(p) for p in procs)
    return ra, rb


def test_public_host_is_seen_at_its_own_address(netns_rig: Rig) -> None:
    targets = start_reflector(netns_rig)
    home = netns_rig.home("pub", nat="none")
    assert home.host.ip == home.host.public_ip
    assert set(observed(netns_rig, home, 40000, targets[:2]).values()) == {f"{home.host.ip}:40000"}


@pytest.mark.parametrize("nat", ["eim", "eim-nofilter", "eim-fullcone"])
def test_eim_router_keeps_one_mapping_for_every_destination(netns_rig: Rig, nat: str) -> None:
    targets = start_reflector(netns_rig)
    home = netns_rig.home("a", nat=nat)
    assert home.router is not None and home.host.public_ip == home.router.ip != home.host.ip
    seen = observed(netns_rig, home, 40000, targets[:2])
    # endpoint-independent mapping, and masquerade keeps the source port when it is free
    assert set(seen.values()) == {f"{home.router.ip}:40000"}, seen


def test_symmetric_router_maps_each_destination_to_another_port(netns_rig: Rig) -> None:
    targets = start_reflector(netns_rig)
    home = netns_rig.home("a", nat="symmetric")
    seen = observed(netns_rig, home, 40000, targets)
    ips = {s.rpartition(":")[0] for s in seen.values()}
    ports = {s.rpartition(":")[2] for s in seen.values()}
    assert ips == {home.host.public_ip}
    # random ports: three destinations all on one port would happen by chance about once in 4e9 runs
    assert len(ports) >= 2, seen


@pytest.mark.parametrize(
    ("nat_a", "nat_b", "same_lan"),
    [
        ("eim", "eim", False),
        ("eim", "eim", True),  # both homes on 10.9.0.0/24 with the same host address
        ("eim-fullcone", "eim-fullcone", False),
        ("eim", "eim-fullcone", False),
        ("none", "eim", False),
    ],
)
def test_hole_punch_succeeds_between_eim_homes(netns_rig: Rig, nat_a: str, nat_b: str, same_lan: bool) -> None:
    lan = "10.9.0.0/24" if same_lan else None
    a = netns_rig.home("a", nat=nat_a, lan_subnet=lan)
    b = netns_rig.home("b", nat=nat_b, lan_subnet=lan)
    ra, rb = punch(netns_rig, a, b)
    assert ra["heard"] and rb["heard"], (ra, rb)
    # from the peer's public address (two routers that both forward unsolicited packets may race in
    # conntrack when both sides' first packets cross, and one flow then gets another public port)
    assert {s.rpartition(":")[0] for s in ra["from"]} == {b.host.public_ip}, ra
    assert {s.rpartition(":")[0] for s in rb["from"]} == {a.host.public_ip}, rb
    if "eim-fullcone" not in (nat_a, nat_b):
        assert ra["from"] == [f"{b.host.public_ip}:41000"], ra
        assert rb["from"] == [f"{a.host.public_ip}:41000"], rb


@pytest.mark.parametrize(("nat_a", "nat_b"), [("eim", "symmetric"), ("symmetric", "symmetric")])
def test_hole_punch_fails_with_a_symmetric_home(netns_rig: Rig, nat_a: str, nat_b: str) -> None:
    a = netns_rig.home("a", nat=nat_a)
    b = netns_rig.home("b", nat=nat_b)
    ra, rb = punch(netns_rig, a, b, secs=1.5)
    assert not (ra["heard"] and rb["heard"]), (ra, rb)


def test_full_cone_home_hears_a_symmetric_peer_and_can_answer_it(netns_rig: Rig) -> None:
    a = netns_rig.home("a", nat="eim-fullcone")
    b = netns_rig.home("b", nat="symmetric")
    # naive punching: b's probes reach a (no inbound filter, but from a port a did not expect); a's
    # probes go to b's mapping towards the reflector, which b's router does not open to a
    reflector = start_reflector(netns_rig)[0]
    ra, rb = punch(netns_rig, a, b, reflector=reflector, secs=2.0)
    assert ra["heard"] and not rb["heard"], (ra, rb)
    assert ra["from"][0].rpartition(":")[0] == b.host.public_ip
    # a puncher that answers where probes come from gets through both ways
    ra, rb = punch(netns_rig, a, b, reflector=reflector, port=41001, modes=("adapt", "-"))
    assert ra["heard"] and rb["heard"], (ra, rb)


def test_unfiltered_router_remaps_after_an_early_inbound_packet(netns_rig: Rig) -> None:
    """The trap of FACTS.md: a peer's packet that reaches a router with no inbound filter before the
    host's first packet to that peer leaves conntrack state, and the router then maps the host's flow
    to that peer to another public port."""
    reflector = start_reflector(netns_rig)[0]
    peer = netns_rig.home("p", nat="none")
    home = netns_rig.home("b", nat="eim-nofilter")
    hb = netns_rig.udptool(home.host, "punch", "41000", reflector, "5", "-")
    mapped = expect_line(hb, r"^mapped (\S+)$").group(1)
    assert mapped == f"{home.host.public_ip}:41000"
    hp = netns_rig.udptool(peer.host, "trap", "42000")
    expect_line(hp, "^ready$")
    assert hp.stdin is not None and hb.stdin is not None
    hp.stdin.write(mapped + "\n")
    hp.stdin.flush()
    expect_line(hp, "^refused$")  # the router's own stack answered: port unreachable
    hb.stdin.write(f"{peer.host.ip}:42000\n")
    hb.stdin.flush()
    source = expect_line(hp, r"^from (\S+)$").group(1)
    ip, _, port = source.rpartition(":")
    assert ip == home.host.public_ip and port != "41000", source


def test_probes_that_expire_in_the_core_avoid_the_unfiltered_router_trap(netns_rig: Rig) -> None:
    """The core is a router (TTL 2 from a home host ends there), so a puncher can open its own router's
    mapping without its packet reaching the peer's router; then both directions go through."""
    a = netns_rig.home("a", nat="eim-nofilter")
    b = netns_rig.home("b", nat="eim-nofilter")
    reflector = start_reflector(netns_rig)[0]
    for port in (41000, 41001, 41002):
        ra, rb = punch(netns_rig, a, b, reflector=reflector, port=port, modes=("ttl", "ttl"))
        assert ra["from"] == [f"{b.host.public_ip}:{port}"], ra
        assert rb["from"] == [f"{a.host.public_ip}:{port}"], rb


def test_loss_rule_drops_about_the_configured_fraction(netns_rig: Rig) -> None:
    target = start_reflector(netns_rig)[0]
    lossy = netns_rig.home("a", nat="eim", wan=Impair(loss_pct=20))
    clean = netns_rig.home("b", nat="eim")
    out = result(netns_rig.udptool(lossy.host, "blast", "40000", target, "500", "lossy"))
    assert 300 <= out["received"] <= 475, out  # 20% configured: 100 expected, sd 9
    out = result(netns_rig.udptool(clean.host, "blast", "40000", target, "500", "clean"))
    assert out["received"] >= 450, out  # only the rule drops packets


@pytest.fixture(params=["c", "python"])
def line_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test's delay lines as the compiled C line, then as delayline.py's Python loop."""
    impl: str = request.param
    monkeypatch.setenv(rig_module.DELAYLINE_ENV, impl)
    return impl


def assert_line_impl(proc: subprocess.Popen[Any], impl: str) -> None:
    """delayline.py exec'd the compiled line (same PID), or runs the Python loop itself."""
    exe = Path(f"/proc/{proc.pid}/exe").resolve().name
    assert exe.startswith("delayline-") if impl == "c" else exe.startswith("python"), (impl, exe)
    assert rig_module.delay_line_kind(proc) == {"c": "C", "python": "Python"}[impl]


def stop_line(proc: subprocess.Popen[Any]) -> tuple[int, int]:
    """SIGTERM a delay line; its final (forwarded, dropped) counts."""
    proc.terminate()
    m = expect_line(proc, r"^stats forwarded=(\d+) dropped=(\d+)$")
    assert proc.wait(timeout=10) == 0
    return int(m.group(1)), int(m.group(2))


def test_delay_line_adds_the_configured_delay_both_ways(make_rig: Any, line_impl: str) -> None:
    rig: Rig = make_rig(relay_link=Impair(delay_ms=20))
    target = start_reflector(rig)[0]
    home = rig.home("a", nat="eim", wan=Impair(delay_ms=30), lan=Impair(delay_ms=5, jitter_ms=5))
    rtts = result(rig.udptool(home.host, "rtt", "40000", target, "5"))["rtts_ms"]
    # one-way delays, both directions, three links; jitter adds up to 2 x 5 ms, scheduling a little
    assert 2 * (20 + 30 + 5) <= min(rtts) <= 2 * (20 + 30 + 5 + 5) + 20, rtts
    assert len(rig.delay_lines) == 3
    for line in rig.delay_lines:
        assert_line_impl(line, line_impl)
        # the UDP echoes reached real sockets (checksums fixed) and came back: both ways, none lost
        forwarded, dropped = stop_line(line)
        assert forwarded >= 2 * 5 and dropped == 0, (forwarded, dropped)


TCP_SINK = """
import hashlib, socket, sys
srv = socket.create_server(("0.0.0.0", 5201))
print("ready", flush=True)
conn, _ = srv.accept()
h, n = hashlib.sha256(), 0
while chunk := conn.recv(65536):
    h.update(chunk)
    n += len(chunk)
print(n, h.hexdigest(), flush=True)
"""

TCP_SOURCE = """
import socket, sys
data = bytes(range(256)) * (int(sys.argv[2]) // 256)
with socket.create_connection((sys.argv[1], 5201), timeout=30) as s:
    s.sendall(data)
"""


def test_delay_line_fixes_udp_and_tcp_checksums(make_rig: Any, line_impl: str) -> None:
    """veth leaves checksums to offload; the line recomputes them, else the receiving stack drops."""
    rig: Rig = make_rig(relay_link=Impair(delay_ms=5))
    target = start_reflector(rig)[0]
    sink = rig.python(rig.relay, "-c", TCP_SINK)
    expect_line(sink, "^ready$")
    x = rig.public_host("x")
    for udp_size in ("1001", "1452"):  # odd and even UDP payloads, each datagram to a real socket
        out = result(rig.udptool(x, "blast", "40000", target, "40", f"s{udp_size}", udp_size))
        assert out["received"] == 40, (udp_size, out)
    size = 2 << 20
    sent = rig.run(x, [sys.executable, "-c", TCP_SOURCE, rig.relay.ip, str(size)], timeout=60)
    assert sent.returncode == 0, sent.stderr
    want = hashlib.sha256(bytes(range(256)) * (size // 256)).hexdigest()
    assert expect_line(sink, r"^\d+ ", timeout=30).string == f"{size} {want}"  # every segment arrived intact
    assert_line_impl(rig.delay_lines[0], line_impl)


def test_delay_line_drops_beyond_its_queue_bound(make_rig: Any, line_impl: str) -> None:
    rig: Rig = make_rig(relay_link=Impair(delay_ms=500, queue_frames=50))
    target = start_reflector(rig)[0]
    x = rig.public_host("x")
    result(rig.udptool(x, "rtt", "40000", target, "1"))  # neighbours resolved: the blast meets only the line
    out = result(rig.udptool(x, "blast", "40001", target, "200", "q"))
    assert out["elapsed"] < 0.5, out  # the whole blast arrives before the first frame of it is due
    # at most 50 frames wait (a few may be the warm-up's retries): the rest of the burst is dropped
    assert 20 <= out["received"] <= 50, out
    forwarded, dropped = stop_line(rig.delay_lines[0])
    assert dropped >= 200 - 50, (forwarded, dropped)


def test_delay_line_runs_in_python_without_gcc(make_rig: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig: Rig = make_rig()
    x = rig.public_host("x")
    sh(["ip", "-n", x.ns, "link", "add", "va", "type", "veth", "peer", "name", "vb"])
    sh(["ip", "-n", x.ns, "link", "set", "va", "up"])
    sh(["ip", "-n", x.ns, "link", "set", "vb", "up"])
    bindir = tmp_path / "bin"  # a PATH with `ip` and nothing else: no gcc
    bindir.mkdir()
    ip = shutil.which("ip")
    assert ip is not None
    (bindir / "ip").symlink_to(ip)
    monkeypatch.delenv(rig_module.DELAYLINE_ENV, raising=False)
    env = {k: v for k, v in os.environ.items() if k != rig_module.DELAYLINE_ENV} | {"PATH": str(bindir)}
    line = rig.spawn(x, [sys.executable, str(rig_module.DELAYLINE), "va", "vb", "1"], env=env)
    expect_line(line, "^ready$")
    assert_line_impl(line, "python")
    assert "gcc not found, running the Python delay line" in rig.log(line)
    assert stop_line(line)[1] == 0
    # forced to C without gcc: a clear error, not a silent fallback
    env[rig_module.DELAYLINE_ENV] = "c"
    failed = rig.run(x, [sys.executable, str(rig_module.DELAYLINE), "va", "vb", "1"], env=env)
    assert failed.returncode != 0 and "gcc is not installed" in failed.stderr, failed.stderr


def tcp_counters(rig: Rig, ns: str) -> tuple[int, int]:
    """The namespace's TCP (OutSegs, RetransSegs) from /proc/net/snmp (each namespace has its own)."""
    lines = [line.split() for line in sh(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"]).splitlines()]
    names, values = (line for line in lines if line[0] == "Tcp:")  # a header line, then the values
    tcp = dict(zip(names[1:], values[1:], strict=True))
    return int(tcp["OutSegs"]), int(tcp["RetransSegs"])


@pytest.mark.parametrize("delay_ms", [0, 2], ids=["no-delay-line", "delay-line"])
def test_loss_draws_once_per_wire_frame_for_tcp_bulk(make_rig: Any, delay_ms: int) -> None:
    """A TCP sender hands its interface GSO super-packets (up to 64 KB) that its router forwards whole: a
    loss rule must still drop each MTU-sized frame on its own, or TCP would see bursts of losses
    where UDP sees single ones. Every segment the sender sent passes the rule once, 5% are dropped,
    and TCP retransmits each of those (but the source's two pure ACKs, which no sender repeats)."""
    rig: Rig = make_rig()
    sink = rig.python(rig.relay, "-c", TCP_SINK)
    expect_line(sink, "^ready$")
    home = rig.home("a", nat="eim", wan=Impair(delay_ms=delay_ms, loss_pct=5))
    segs0, retrans0 = tcp_counters(rig, home.host.ns)
    size = 4 << 20
    sent = rig.run(home.host, [sys.executable, "-c", TCP_SOURCE, rig.relay.ip, str(size)], timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert expect_line(sink, r"^\d+ ", timeout=30).string.split()[0] == str(size)
    segs1, retrans1 = tcp_counters(rig, home.host.ns)
    segments, retransmits = segs1 - segs0, retrans1 - retrans0
    counts = rig.loss_counts()
    assert set(counts) == {(home.router.ns, "wan"), (rig.pub, next(n for ns, n in counts if ns == rig.pub))}
    seen, dropped = next(v for (ns, _), v in counts.items() if ns == rig.pub)  # the upstream direction
    # one draw per segment (OutSegs counts new data, RetransSegs the rest): 4 MiB is ~2,900 segments of
    # 1,448 bytes, which the sender hands its interface as a few hundred super-packets
    sent_segments = segments + retransmits
    assert size / 1448 <= seen and abs(seen - sent_segments) <= 0.01 * sent_segments, (seen, segments, retransmits)
    assert 0.035 <= dropped / seen <= 0.065, (dropped, seen)  # 5%: sd 0.4% at this count
    # every dropped data segment was sent again; the source's two pure ACKs (the handshake's last
    # packet, the one answering the sink's FIN) pass the rule too and are never retransmitted
    assert retransmits >= dropped - 2, (retransmits, dropped)


def test_rate_limit_caps_throughput(netns_rig: Rig) -> None:
    target = start_reflector(netns_rig)[0]
    home = netns_rig.home("a", nat="eim", wan=Impair(rate_kbit=1000))
    out = result(netns_rig.udptool(home.host, "blast", "40000", target, "300", "rate", "1000"))
    # what tbf can let through: the rate over the sending time, its 32 kbit burst and 400 ms of queue
    limit_bits = 1000e3 * (out["elapsed"] + 0.4 + 0.1) + 32e3
    assert 0 < out["received"] * 1028 * 8 <= limit_bits, out


def test_teardown_kills_processes_and_removes_namespaces_even_halfway(
    make_rig: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig: Rig = make_rig(public_subnet="203.0.113.0/29")  # room for the relay and one router
    proc = rig.udptool(rig.relay, "reflect", "3478")
    expect_line(proc, "^ready$")
    rig.home("a", nat="eim")
    with pytest.raises(RigError, match="full"):  # fails after creating the router's namespace
        rig.home("b", nat="eim")
    names = list(rig.namespaces)
    assert any(n.endswith("-br") for n in names)
    rig.close()
    assert proc.poll() is not None
    assert not set(names) & set(list_namespaces())
    # the constructor fails after starting a process in a namespace of its own: all gone too
    monkeypatch.setattr(rig_module, "DELAYLINE", rig_module.HERE / "no-such-delayline.py")
    with pytest.raises(RigError, match="exited"):
        Rig(relay_link=Impair(delay_ms=1), tag="half")
    assert not [n for n in list_namespaces() if "-half-" in n]


def test_helpers_run_inside_isolated_namespaces(netns_rig: Rig, tmp_path: Path) -> None:
    links = netns_rig.run(netns_rig.relay, ["ip", "-o", "link", "show"])
    assert links.returncode == 0
    assert [line.split(":")[1].strip().split("@")[0] for line in links.stdout.splitlines()] == ["lo", "eth0"]
    addrs = netns_rig.run(netns_rig.relay, ["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
    assert f" {netns_rig.relay.ip}/30 " in addrs
    # the core router knows only the rig's own networks: anything else is a dead end, not the host's
    assert netns_rig.run(netns_rig.pub, ["ip", "route", "get", "192.0.2.1"]).returncode != 0
    with pytest.raises(RigError, match="timed out"):
        netns_rig.run(netns_rig.relay, ["sleep", "30"], timeout=0.2)
    target = tmp_path / "out.txt"
    proc = netns_rig.python(netns_rig.relay, "-c", f"open({str(target)!r}, 'w').write('hello\\n')")
    assert netns_rig.wait_file(target, proc) == "hello"


def test_a_second_machine_on_a_home_lan_shares_the_router(netns_rig: Rig) -> None:
    targets = start_reflector(netns_rig)
    home = netns_rig.home("a", nat="eim")
    phone = netns_rig.lan_host("a", "phone")
    assert phone.ip == "10.1.0.3" and phone.public_ip == home.host.public_ip
    # out through the same NAT: seen at the router's public address
    out = result(netns_rig.udptool(phone, "mapping", "41000", *targets[:1]))
    assert set(out["seen"].values()) == {f"{home.host.public_ip}:41000"}
    # and the two machines reach each other directly on the LAN (no NAT between them)
    reflector = netns_rig.udptool(home.host, "reflect", "42000")
    expect_line(reflector, "^ready$")
    out = result(netns_rig.udptool(phone, "mapping", "41001", f"{home.host.ip}:42000"))
    assert out["seen"] == {f"{home.host.ip}:42000": f"{phone.ip}:41001"}


def _tcp_cc(ns: str) -> str:
    return sh(["ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/tcp_congestion_control"]).strip()


def test_tcp_congestion_control_is_set_in_every_namespace(make_rig: Any) -> None:
    """benchmarks/wan.py --tcp-cc: a new namespace inherits the host's default (which may be BBR), so the rig
    sets the chosen one in every namespace it creates, homes and their hosts included."""
    host = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    plain: Rig = make_rig()
    assert {_tcp_cc(ns) for ns in plain.namespaces} == {host}
    want = "cubic" if host != "cubic" else "reno"  # on a BBR host, cubic must first be allowed (see the rig)
    rig: Rig = make_rig(tcp_congestion_control=want)
    rig.home("a", nat="eim")
    assert len(rig.namespaces) >= 4  # pub, relay, the home's router and host
    assert {ns: _tcp_cc(ns) for ns in rig.namespaces} == dict.fromkeys(rig.namespaces, want)


def test_the_rig_gives_back_the_hosts_allowed_tcp_congestion_controls(netns_session: None) -> None:
    """Widening the host's allowed list for a namespace's choice lasts only as long as the rig."""
    allowed = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control")
    original = allowed.read_text()
    default = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    want = next(cc for cc in rig_module.tcp_congestion_controls() if cc != default)
    try:
        allowed.write_text(default + "\n")  # as a host whose list holds only its default
        rig = Rig(tcp_congestion_control=want)
        try:
            rig.home("a", nat="eim")
            assert want in allowed.read_text().split()
            assert {_tcp_cc(ns) for ns in rig.namespaces} == {want}
        finally:
            rig.close()
        assert allowed.read_text().split() == [default]
    finally:
        allowed.write_text(original)


def test_unavailable_tcp_congestion_control_fails_before_building(make_rig: Any) -> None:
    own = f"{rig_module.PREFIX}{os.getpid()}-"
    before = {n for n in list_namespaces() if n.startswith(own)}
    with pytest.raises(RigError, match="'nosuchcc' is not available in this kernel"):
        make_rig(tcp_congestion_control="nosuchcc")
    assert {n for n in list_namespaces() if n.startswith(own)} == before
